// One live session at a time: Start → (prepare: settings, input source) → websocket → live → ended.
// The websocket conversation itself is LiveClient's (protocol.ts), the WebRTC one WebRtcLink's
// (webrtc.ts); this module owns their lifecycle and tells the rest of the page what happened through
// the hooks. Over MJPEG the parameters go with every frame, over WebRTC as they change.
import { LiveClient, socketUrl, type ClientEvent, type EndReason, type SocketLike } from './protocol';
import type { Preset } from './presets';
import type { InputMode, ParamValues } from './schema';
import { uuid } from './storage';
import type { Transport } from './transport';
import { WebRtcLink, type WebRtcLinkLike, type WebRtcLinkOptions } from './webrtc';

export type Phase = 'idle' | 'starting' | 'connecting' | 'live';

export interface SessionHooks {
	/**
	 * Before connecting: load what is missing and open the input source. Resolves false to cancel
	 * the start; `stillWanted()` turns false once the user stopped meanwhile.
	 */
	prepare(stillWanted: () => boolean): Promise<boolean>;
	inputMode(): InputMode;
	/** The parameter values to send with the next frame. */
	params(): ParamValues;
	/** One JPEG of the input, or null when there is none yet. */
	frame(): Promise<Blob | null>;
	/** Which input the frames come from; a new value tells the server the scene changed. */
	sourceId?(): number;
	/** A new session with this user id is about to connect. */
	onConnecting(userId: string): void;
	/** The transport of a new session (read once it is prepared). */
	transport(): Transport;
	/** The input as a video track, for WebRTC; null when there is none. */
	inputTrack(): MediaStreamTrack | null;
	/** STUN and TURN servers for WebRTC. */
	iceServers(): RTCIceServer[];
	/** The server accepted the session: over MJPEG its output stream can be opened (see `transport`). */
	onLive(userId: string, streamToken: string): void;
	/** The WebRTC output arrived. */
	onOutputVideo(stream: MediaStream): void;
	/** WebRTC did not work, and why: the session goes on over MJPEG (its output stream can be opened). */
	onFallback(reason: string): void;
	/** An input went out that an output frame will answer (latency is measured from `at`). */
	onInputSent(at: number): void;
	/** An error the server reported; the session goes on. */
	onServerError(message: string): void;
	/** News from the server that is no error; the session goes on. */
	onServerInfo?(message: string): void;
	/** The image prompt to send when the session starts (IP-Adapter pipelines), or null. */
	imagePrompt?(): Blob | null;
	/** The presets to send when the session starts (OSC recalls them by number). */
	presets?(): Preset[];
	/** The server changed parameters from outside the page (OSC): they are the session's now. */
	onServerParams?(params: Record<string, unknown>): void;
	onEnded(reason: EndReason, message: string): void;
}

export interface SessionOptions {
	/** Where the page is: the websocket goes to its host. */
	page?: { protocol: string; host: string };
	/** A stand-in for the browser WebSocket (tests). */
	createSocket?: (url: string) => SocketLike;
	/** A stand-in for the WebRTC link (tests). */
	createWebRtcLink?: (options: WebRtcLinkOptions) => WebRtcLinkLike;
}

export class LiveSession {
	phase = $state<Phase>('idle');
	/** The user id of the current or last session. */
	userId = '';
	/** Opens this session's output stream past any others (from the server's "connected"). */
	streamToken = '';
	/** The parameter values sent last (a snapshot records them). */
	lastSentParams: ParamValues = {};
	/** Inputs sent in this session that wait for an output. */
	framesSent = 0;
	/** How the current or last session's pictures travel; WebRTC may fall back to MJPEG mid-session. */
	transport = $state<Transport>('mjpeg');
	#hooks: SessionHooks;
	#options: SessionOptions;
	#client: LiveClient | null = null;
	#lastClient: LiveClient | null = null;
	#link: WebRtcLinkLike | null = null;
	/** Bumped on every start and end: async work begun for an older one drops its result. */
	#generation = 0;
	#lastSentJson = '';
	#lastSendChanged = true;

	constructor(hooks: SessionHooks, options: SessionOptions = {}) {
		this.#hooks = hooks;
		this.#options = options;
	}

	/** A check that stays true until the current start or session is over. */
	guard(): () => boolean {
		const generation = this.#generation;
		return () => generation === this.#generation;
	}

	/** readyState of the latest websocket (kept after it closed), null before the first. */
	get socketState(): number | null {
		return this.#lastClient?.socketReadyState ?? null;
	}

	toggle(): void {
		if (this.phase === 'idle') void this.start();
		else this.stop();
	}

	async start(): Promise<void> {
		if (this.phase !== 'idle') return;
		this.#generation++;
		const stillWanted = this.guard();
		this.framesSent = 0;
		this.phase = 'starting';
		const ok = await this.#hooks.prepare(stillWanted);
		if (!stillWanted()) return;
		if (!ok) {
			this.phase = 'idle';
			return;
		}
		this.phase = 'connecting';
		this.transport = this.#hooks.transport();
		this.userId = uuid();
		this.#lastSentJson = '';
		this.framesSent = 0;
		this.#hooks.onConnecting(this.userId);
		const client: LiveClient = new LiveClient({
			url: socketUrl(this.#options.page ?? location, this.userId),
			createSocket: this.#options.createSocket,
			inputMode: this.#hooks.inputMode(),
			getParams: () => this.#paramsToSend(),
			getFrame: () => this.#hooks.frame(),
			sourceId: () => this.#hooks.sourceId?.() ?? 0,
			onEvent: (e) => this.#onClientEvent(client, e)
		});
		// Over WebRTC the camera goes as a track: the websocket's frame requests wait for a fallback.
		if (this.transport === 'webrtc') client.holdFrames(true);
		this.#client = client;
		this.#lastClient = client;
		client.connect();
	}

	/** Send a new image prompt (or drop it: null) to the live session; a later session sends the hook's. */
	sendImagePrompt(jpeg: Blob | null): void {
		if (this.phase === 'live') this.#client?.sendImagePrompt(jpeg);
	}

	/** Send the presets to the live session (a later session sends the hook's). */
	sendPresets(presets: Preset[]): void {
		if (this.phase === 'live') this.#client?.sendPresets(presets);
	}

	/** The input switched: over WebRTC the server hears it now (over MJPEG with the next frame). */
	sourceChanged(): void {
		this.#link?.sendNewSource();
	}

	/** The parameters changed: over WebRTC they go now (over MJPEG with the next frame). */
	paramsChanged(values: ParamValues): void {
		if (!this.#link) return;
		this.lastSentParams = values;
		this.#link.sendParams(values);
	}

	stop(): void {
		if (this.phase === 'idle') return;
		if (this.#client) this.#client.stop();
		else this.#end('stopped', '');
	}

	#paramsToSend(): ParamValues {
		this.lastSentParams = this.#hooks.params();
		const json = JSON.stringify(this.lastSentParams);
		this.#lastSendChanged = json !== this.#lastSentJson;
		this.#lastSentJson = json;
		return this.lastSentParams;
	}

	#onClientEvent(c: LiveClient, e: ClientEvent): void {
		if (c !== this.#client) return;
		switch (e.type) {
			case 'connected': {
				this.phase = 'live';
				this.streamToken = e.streamToken;
				const prompt = this.#hooks.imagePrompt?.() ?? null;
				if (prompt) c.sendImagePrompt(prompt);
				const presets = this.#hooks.presets?.() ?? [];
				if (presets.length) c.sendPresets(presets);
				this.#hooks.onLive(this.userId, e.streamToken);
				if (this.transport === 'webrtc') this.#startWebRtc(c);
				break;
			}
			case 'frame-sent':
				// A text pipeline generates only when the parameters change: only such sends wait
				// for an output, so only they count for latency.
				if (!e.empty && (this.#hooks.inputMode() === 'image' || this.#lastSendChanged)) {
					this.framesSent++;
					this.#hooks.onInputSent(e.at);
				}
				break;
			case 'server-error':
				this.#hooks.onServerError(e.message);
				break;
			case 'server-info':
				this.#hooks.onServerInfo?.(e.message);
				break;
			case 'server-params':
				this.#hooks.onServerParams?.(e.params);
				break;
			case 'ended':
				this.#end(e.reason, e.message);
				break;
		}
	}

	#startWebRtc(c: LiveClient): void {
		const track = this.#hooks.inputTrack();
		if (!track) {
			this.#fallBack(c, 'the input gave no video track');
			return;
		}
		const options: WebRtcLinkOptions = {
			userId: this.userId,
			streamToken: this.streamToken,
			iceServers: this.#hooks.iceServers(),
			track,
			params: () => this.#paramsToSend(),
			onOutput: (stream) => {
				if (this.#link === link) this.#hooks.onOutputVideo(stream);
			},
			onServerMessage: (level, message) => {
				if (this.#link !== link) return;
				if (level === 'error') this.#hooks.onServerError(message);
				else this.#hooks.onServerInfo?.(message);
			},
			onFailed: (reason) => {
				if (this.#link === link) this.#fallBack(c, reason);
			}
		};
		const link = this.#options.createWebRtcLink?.(options) ?? new WebRtcLink(options);
		this.#link = link;
		link.start();
	}

	/** WebRTC did not work: the session goes on, its frames over the websocket and its output as MJPEG. */
	#fallBack(c: LiveClient, reason: string): void {
		if (c !== this.#client) return;
		this.#link?.close();
		this.#link = null;
		this.transport = 'mjpeg';
		this.#hooks.onFallback(reason);
		c.holdFrames(false);
	}

	#end(reason: EndReason, message: string): void {
		this.#generation++;
		this.#link?.close();
		this.#link = null;
		this.#client = null;
		this.phase = 'idle';
		this.#hooks.onEnded(reason, message);
	}
}
