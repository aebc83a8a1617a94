/**
 * The websocket protocol client (the de-facto protocol of Real-Time-Latent-Consistency-Model):
 *
 *   server → client  {"status":"connected"} | {"status":"wait"} | {"status":"send_frame"}
 *                    ("connected" may carry "stream_token": the session's own stream opens with it,
 *                    however many other streams of the session are open)
 *                    {"status":"timeout","message"} | {"status":"error","message"}
 *                    {"status":"info","message"}: news beside the frames (this server's; not an error)
 *                    {"status":"params","params"}: values changed from outside the page (OSC), now
 *                    the session's (this server's)
 *   client → server  only in reply to send_frame: {"status":"next_frame"}, then the JSON of all
 *                    parameter values, then (image pipelines) one binary JPEG; an empty binary
 *                    message means "no frame yet". The first frame of another input (camera,
 *                    screen, file) says so: {"status":"next_frame","new_source":true}.
 *                    While the camera goes over WebRTC (webrtc.ts) the page holds its answers.
 *                    At any other time (this server's): {"status":"presets","presets":[…]}, the
 *                    page's presets, which OSC recalls by number.
 *
 * The socket is injected so the state machine can be unit-tested with a fake.
 */

/** The subset of the browser WebSocket this client uses. */
export interface SocketLike {
	readonly readyState: number;
	binaryType: string;
	onopen: ((ev: unknown) => void) | null;
	onmessage: ((ev: { data: unknown }) => void) | null;
	onerror: ((ev: unknown) => void) | null;
	onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
	send(data: string | Blob | ArrayBuffer | ArrayBufferView): void;
	close(code?: number, reason?: string): void;
}

export const WS_CONNECTING = 0;
export const WS_OPEN = 1;

export type ClientState = 'idle' | 'connecting' | 'connected' | 'ended';

/** Why a session ended. */
export type EndReason =
	| 'stopped' // the user stopped it
	| 'unreachable' // the socket never opened (refused, or the connect timeout passed)
	| 'full' // "Server is full"
	| 'timeout' // idle timeout or maximum session length
	| 'error' // the server sent an error and closed
	| 'lost'; // the connection dropped

export type FrameData = Blob | ArrayBuffer | Uint8Array;

export type ClientEvent =
	| { type: 'state'; state: ClientState }
	/** The server accepted the session: the output stream can be requested now (with the stream
	 * token, when the server sent one). */
	| { type: 'connected'; message: string; streamToken: string }
	| { type: 'frame-sent'; at: number; bytes: number; empty: boolean }
	/** A server error message; the session goes on unless an `ended` event follows. */
	| { type: 'server-error'; message: string }
	/** News from the server that is no error (its temporal memory lowered, say). */
	| { type: 'server-info'; message: string }
	/** Parameter values the server changed from outside the page (OSC): the session's values now. */
	| { type: 'server-params'; params: Record<string, unknown> }
	| { type: 'ended'; reason: EndReason; message: string; code?: number };

export interface LiveClientOptions {
	url: string;
	inputMode: 'image' | 'text';
	/** All parameter values, sent with every frame. */
	getParams: () => Record<string, unknown>;
	/** One encoded frame, or null when the source has none yet. Not called for text pipelines. */
	getFrame?: () => Promise<FrameData | null>;
	/** Which input the frames come from (read after each frame); a change is sent as `new_source`. */
	sourceId?: () => number;
	onEvent: (ev: ClientEvent) => void;
	createSocket?: (url: string) => SocketLike;
	/** Give up when the socket is not open after this long (ms). */
	connectTimeoutMs?: number;
	/** Pause before answering send_frame with "no frame yet", so the two sides do not spin (ms). */
	emptyFrameDelayMs?: number;
	now?: () => number;
	setTimer?: (fn: () => void, ms: number) => unknown;
	clearTimer?: (id: unknown) => void;
}

export const SERVER_FULL = 'Server is full';

function frameBytes(f: FrameData): number {
	if (typeof Blob !== 'undefined' && f instanceof Blob) return f.size;
	return (f as ArrayBuffer | Uint8Array).byteLength;
}

export class LiveClient {
	state: ClientState = 'idle';
	private ws: SocketLike | null = null;
	private lastWs: SocketLike | null = null;
	private connectTimer: unknown = null;
	private frameRequested = false;
	private lastSourceId: number | null = null;
	private pumping = false;
	private framesHeld = false;
	private lastError: string | null = null;
	private serverClosing: { reason: EndReason; message: string } | null = null;
	private readonly o: Required<
		Pick<LiveClientOptions, 'connectTimeoutMs' | 'emptyFrameDelayMs' | 'now' | 'setTimer' | 'clearTimer'>
	> &
		LiveClientOptions;

	constructor(options: LiveClientOptions) {
		this.o = {
			connectTimeoutMs: 5000,
			emptyFrameDelayMs: 100,
			now: () => performance.now(),
			setTimer: (fn, ms) => setTimeout(fn, ms),
			clearTimer: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
			...options
		};
	}

	/** Open the socket; events report how it goes. */
	connect(): void {
		if (this.state !== 'idle') throw new Error(`connect() in state ${this.state}`);
		this.setState('connecting');
		let ws: SocketLike;
		try {
			ws = this.o.createSocket
				? this.o.createSocket(this.o.url)
				: (new WebSocket(this.o.url) as unknown as SocketLike);
		} catch (e) {
			this.end('unreachable', `Cannot open a connection to the server (${String(e)})`);
			return;
		}
		this.ws = ws;
		this.lastWs = ws;
		ws.binaryType = 'arraybuffer';
		this.connectTimer = this.o.setTimer(() => {
			this.connectTimer = null;
			if (this.state === 'connecting') {
				this.end('unreachable', `No answer from the server within ${Math.round(this.o.connectTimeoutMs / 1000)} s`);
			}
		}, this.o.connectTimeoutMs);
		ws.onopen = () => {
			// The session counts as connected once the server says so; the timer keeps running until then.
		};
		ws.onmessage = (ev) => this.onMessage(ev.data);
		ws.onerror = () => {
			// A close event always follows; it decides what happened.
		};
		ws.onclose = (ev) => this.onClose(ev.code, ev.reason);
	}

	/**
	 * Send an image prompt (a JPEG) for the server to use with every frame from now on, or drop it
	 * (null). Two messages in one go, between frame replies (those are sent in one go too).
	 * False when there is no open session to send it to.
	 */
	sendImagePrompt(jpeg: FrameData | null): boolean {
		const ws = this.openSocket();
		if (!ws) return false;
		if (jpeg === null) {
			ws.send(JSON.stringify({ status: 'image_prompt', clear: true }));
		} else {
			ws.send(JSON.stringify({ status: 'image_prompt' }));
			ws.send(jpeg);
		}
		return true;
	}

	/**
	 * Send the page's presets (slot n is item n-1, at most 9), which the server recalls by number
	 * (OSC `/live/preset <n>`); it answers only when it refuses them. False when there is no open
	 * session to send them to.
	 */
	sendPresets(presets: { name: string; params: Record<string, unknown> }[]): boolean {
		const ws = this.openSocket();
		if (!ws) return false;
		ws.send(JSON.stringify({ status: 'presets', presets }));
		return true;
	}

	/**
	 * Hold the answers to send_frame (the camera goes over WebRTC: the server must not get every
	 * frame twice), or answer again, starting with a request that came while they were held.
	 */
	holdFrames(held: boolean): void {
		this.framesHeld = held;
		if (!held) void this.pump();
	}

	/** Close the session from our side. */
	stop(): void {
		this.end('stopped', '');
	}

	/** readyState of the latest socket (kept after the session ended), null before connect(). */
	get socketReadyState(): number | null {
		return this.lastWs ? this.lastWs.readyState : null;
	}

	/** The socket of a session that is connected, or null. */
	private openSocket(): SocketLike | null {
		const ws = this.ws;
		return ws && this.state === 'connected' && ws.readyState === WS_OPEN ? ws : null;
	}

	private setState(s: ClientState) {
		if (this.state === s) return;
		this.state = s;
		this.o.onEvent({ type: 'state', state: s });
	}

	private onMessage(data: unknown) {
		if (this.state === 'ended') return;
		if (typeof data !== 'string') return; // the server sends no binary messages
		let msg: { status?: unknown; message?: unknown; stream_token?: unknown; params?: unknown };
		try {
			msg = JSON.parse(data);
		} catch {
			return;
		}
		if (!msg || typeof msg !== 'object') return;
		const message = typeof msg.message === 'string' ? msg.message : '';
		switch (msg.status) {
			case 'connected':
				this.markConnected(message || 'Connected', typeof msg.stream_token === 'string' ? msg.stream_token : '');
				break;
			case 'wait':
				// Some servers send only "wait" at accept; either one means the session is up.
				this.markConnected('Connected');
				break;
			case 'send_frame':
				this.markConnected('Connected');
				// A non-fatal error is followed by a new request: it no longer explains a close.
				this.lastError = null;
				this.frameRequested = true;
				void this.pump();
				break;
			case 'timeout':
				this.serverClosing = { reason: 'timeout', message: message || 'Session timed out' };
				this.end('timeout', this.serverClosing.message);
				break;
			case 'error': {
				const text = message || 'Server error';
				if (text === SERVER_FULL || /server is full/i.test(text)) {
					this.serverClosing = { reason: 'full', message: text };
					this.end('full', text);
					return;
				}
				this.lastError = text;
				this.o.onEvent({ type: 'server-error', message: text });
				break;
			}
			case 'info':
				if (message) this.o.onEvent({ type: 'server-info', message });
				break;
			case 'params':
				if (msg.params && typeof msg.params === 'object' && !Array.isArray(msg.params)) {
					this.o.onEvent({ type: 'server-params', params: msg.params as Record<string, unknown> });
				}
				break;
			default:
				break;
		}
	}

	private markConnected(message: string, streamToken = '') {
		if (this.state !== 'connecting') return;
		if (this.connectTimer !== null) {
			this.o.clearTimer(this.connectTimer);
			this.connectTimer = null;
		}
		this.setState('connected');
		this.o.onEvent({ type: 'connected', message, streamToken });
	}

	/** Answer send_frame requests, one at a time, in order. */
	private async pump() {
		if (this.pumping) return;
		this.pumping = true;
		try {
			while (this.frameRequested && !this.framesHeld && this.state === 'connected') {
				this.frameRequested = false;
				let frame: FrameData | null = null;
				if (this.o.inputMode === 'image') {
					try {
						frame = this.o.getFrame ? await this.o.getFrame() : null;
					} catch {
						frame = null;
					}
					if (!frame || frameBytes(frame) === 0) {
						frame = null;
						await new Promise<void>((r) => this.o.setTimer(r, this.o.emptyFrameDelayMs));
					}
				}
				const ws = this.ws;
				if (!ws || this.state !== 'connected' || ws.readyState !== WS_OPEN) break;
				let params: Record<string, unknown>;
				try {
					params = this.o.getParams();
				} catch {
					params = {};
				}
				// The server starts its memory of the stream afresh (temporal consistency) on another input.
				const sourceId = frame ? this.o.sourceId?.() : undefined;
				const newSource = sourceId !== undefined && this.lastSourceId !== null && sourceId !== this.lastSourceId;
				if (sourceId !== undefined) this.lastSourceId = sourceId;
				ws.send(JSON.stringify(newSource ? { status: 'next_frame', new_source: true } : { status: 'next_frame' }));
				ws.send(JSON.stringify(params));
				if (this.o.inputMode === 'image') {
					ws.send(frame ?? new ArrayBuffer(0));
				}
				this.o.onEvent({
					type: 'frame-sent',
					at: this.o.now(),
					bytes: frame ? frameBytes(frame) : 0,
					empty: this.o.inputMode === 'image' && !frame
				});
			}
		} finally {
			this.pumping = false;
		}
	}

	private onClose(code: number, reason: string) {
		if (this.state === 'ended') return;
		if (this.state === 'connecting') {
			if (this.lastError) {
				this.end('error', this.lastError, code);
			} else {
				this.end('unreachable', 'Cannot connect to the server', code);
			}
			return;
		}
		if (this.lastError) {
			this.end('error', this.lastError, code);
			return;
		}
		this.end('lost', reason ? `Connection closed: ${reason}` : 'Connection to the server was lost', code);
	}

	private end(reason: EndReason, message: string, code?: number) {
		if (this.state === 'ended') return;
		if (this.connectTimer !== null) {
			this.o.clearTimer(this.connectTimer);
			this.connectTimer = null;
		}
		const ws = this.ws;
		this.ws = null;
		if (ws) {
			ws.onopen = null;
			ws.onmessage = null;
			ws.onerror = null;
			ws.onclose = null;
			if (ws.readyState === WS_OPEN || ws.readyState === WS_CONNECTING) {
				try {
					ws.close(1000, reason === 'stopped' ? 'client stopped' : undefined);
				} catch {
					/* already closing */
				}
			}
		}
		this.setState('ended');
		this.o.onEvent({ type: 'ended', reason, message, code });
	}
}

/** The websocket URL for a user id on the page's own origin. */
export function socketUrl(loc: { protocol: string; host: string }, userId: string): string {
	const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
	return `${scheme}//${loc.host}/api/ws/${encodeURIComponent(userId)}`;
}
