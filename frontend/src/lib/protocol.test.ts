import { beforeEach, describe, expect, it } from 'vitest';
import { LiveClient, socketUrl, type ClientEvent, type LiveClientOptions, type SocketLike } from './protocol';

/** A scriptable stand-in for the browser WebSocket. */
class FakeSocket implements SocketLike {
	readyState = 0;
	binaryType = 'blob';
	onopen: ((ev: unknown) => void) | null = null;
	onmessage: ((ev: { data: unknown }) => void) | null = null;
	onerror: ((ev: unknown) => void) | null = null;
	onclose: ((ev: { code: number; reason: string }) => void) | null = null;
	sent: unknown[] = [];
	closedWith: [number | undefined, string | undefined] | null = null;
	constructor(public url: string) {}
	send(data: unknown) {
		if (this.readyState !== 1) throw new Error('send on a socket that is not open');
		this.sent.push(data);
	}
	close(code?: number, reason?: string) {
		this.closedWith = [code, reason];
		this.readyState = 3;
	}
	// --- server side
	open() {
		this.readyState = 1;
		this.onopen?.({});
	}
	msg(obj: unknown) {
		this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
	}
	serverClose(code = 1000, reason = '') {
		this.readyState = 3;
		this.onclose?.({ code, reason });
	}
	fail() {
		this.readyState = 3;
		this.onerror?.({});
		this.onclose?.({ code: 1006, reason: '' });
	}
}

/** Manual timers so timeouts are deterministic. */
class Timers {
	now = 0;
	private q: { at: number; fn: () => void; id: number }[] = [];
	private n = 0;
	set = (fn: () => void, ms: number) => {
		const id = ++this.n;
		this.q.push({ at: this.now + ms, fn, id });
		return id;
	};
	clear = (id: unknown) => {
		this.q = this.q.filter((t) => t.id !== id);
	};
	advance(ms: number) {
		const end = this.now + ms;
		for (;;) {
			this.q.sort((a, b) => a.at - b.at);
			const t = this.q[0];
			if (!t || t.at > end) break;
			this.q.shift();
			this.now = t.at;
			t.fn();
		}
		this.now = end;
	}
	get pending() {
		return this.q.length;
	}
}

const flush = () => new Promise((r) => setTimeout(r, 0));

function setup(over: Partial<LiveClientOptions> = {}) {
	const timers = new Timers();
	const events: ClientEvent[] = [];
	let sock!: FakeSocket;
	let params: Record<string, unknown> = { prompt: 'a cat', steps: 4 };
	let frame: Uint8Array | null = new Uint8Array([0xff, 0xd8, 1, 2, 3]);
	let frameCalls = 0;
	const client = new LiveClient({
		url: 'ws://x/api/ws/u1',
		inputMode: 'image',
		getParams: () => params,
		getFrame: async () => {
			frameCalls++;
			return frame;
		},
		onEvent: (e) => events.push(e),
		createSocket: (url) => (sock = new FakeSocket(url)),
		setTimer: timers.set,
		clearTimer: timers.clear,
		now: () => timers.now,
		...over
	});
	return {
		client,
		events,
		timers,
		get sock() {
			return sock;
		},
		setParams: (p: Record<string, unknown>) => (params = p),
		setFrame: (f: Uint8Array | null) => (frame = f),
		get frameCalls() {
			return frameCalls;
		},
		types: () => events.map((e) => e.type),
		ended: () => events.find((e) => e.type === 'ended') as Extract<ClientEvent, { type: 'ended' }> | undefined
	};
}

/** Open and accept like the server does. */
function accept(t: ReturnType<typeof setup>) {
	t.sock.open();
	t.sock.msg({ status: 'connected', message: 'Connected' });
	t.sock.msg({ status: 'wait' });
}

describe('LiveClient', () => {
	let t: ReturnType<typeof setup>;
	beforeEach(() => {
		t = setup();
	});

	it('connects and reports the server accepting the session', () => {
		t.client.connect();
		expect(t.sock.url).toBe('ws://x/api/ws/u1');
		expect(t.sock.binaryType).toBe('arraybuffer');
		expect(t.client.state).toBe('connecting');
		accept(t);
		expect(t.client.state).toBe('connected');
		expect(t.types()).toEqual(['state', 'state', 'connected']);
		expect(t.sock.sent).toEqual([]);
		expect(t.timers.pending).toBe(0); // connect timer cleared
	});

	it('passes on the server\'s news (info) without taking it for an error', () => {
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'info', message: 'Temporal consistency lowered' });
		expect(t.events.filter((e) => e.type === 'server-info')).toEqual([{ type: 'server-info', message: 'Temporal consistency lowered' }]);
		expect(t.types()).not.toContain('server-error');
		expect(t.client.state).toBe('connected');
	});

	it("passes on the stream token of the server's connected message (none from the anchor's server)", () => {
		t.client.connect();
		t.sock.open();
		t.sock.msg({ status: 'connected', message: 'Connected', stream_token: 'tok-1' });
		expect(t.events.find((e) => e.type === 'connected')).toEqual({ type: 'connected', message: 'Connected', streamToken: 'tok-1' });
		const other = setup();
		other.client.connect();
		accept(other);
		expect(other.events.find((e) => e.type === 'connected')).toEqual({ type: 'connected', message: 'Connected', streamToken: '' });
	});

	it('answers send_frame with next_frame, all params, then the JPEG, in order', async () => {
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'send_frame' });
		await flush();
		expect(t.sock.sent.length).toBe(3);
		expect(JSON.parse(t.sock.sent[0] as string)).toEqual({ status: 'next_frame' });
		expect(JSON.parse(t.sock.sent[1] as string)).toEqual({ prompt: 'a cat', steps: 4 });
		expect(t.sock.sent[2]).toEqual(new Uint8Array([0xff, 0xd8, 1, 2, 3]));
		const sent = t.events.find((e) => e.type === 'frame-sent');
		expect(sent).toMatchObject({ bytes: 5, empty: false });
	});

	it('sends an image prompt as a status then its JPEG, or a clear; nothing before the session is up', () => {
		const jpeg = new Uint8Array([0xff, 0xd8, 9]);
		t.client.connect();
		expect(t.client.sendImagePrompt(jpeg)).toBe(false);
		accept(t);
		expect(t.client.sendImagePrompt(jpeg)).toBe(true);
		expect(t.client.sendImagePrompt(null)).toBe(true);
		expect(t.sock.sent.map((m) => (typeof m === 'string' ? JSON.parse(m) : m))).toEqual([
			{ status: 'image_prompt' },
			jpeg,
			{ status: 'image_prompt', clear: true }
		]);
		t.client.stop();
		expect(t.client.sendImagePrompt(jpeg)).toBe(false);
	});

	it('sends the presets as one status message; nothing before the session is up or after it', () => {
		const presets = [
			{ name: 'Soft', params: { prompt: 'a cat', steps: 2 } },
			{ name: '', params: {} }
		];
		t.client.connect();
		expect(t.client.sendPresets(presets)).toBe(false);
		accept(t);
		expect(t.client.sendPresets(presets)).toBe(true);
		expect(t.client.sendPresets([])).toBe(true);
		expect(t.sock.sent.map((m) => JSON.parse(m as string))).toEqual([
			{ status: 'presets', presets },
			{ status: 'presets', presets: [] }
		]);
		t.client.stop();
		expect(t.client.sendPresets(presets)).toBe(false);
	});

	it("passes on the parameters the server changed from outside (OSC); a malformed one or an unknown status is ignored", () => {
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'params', params: { strength: 0.7, prompt: 'from OSC' } });
		t.sock.msg({ status: 'params', params: [0.7] });
		t.sock.msg({ status: 'params', params: 'strength=0.7' });
		t.sock.msg({ status: 'params' });
		t.sock.msg({ status: 'dance', params: { strength: 0.1 } });
		expect(t.events.filter((e) => e.type === 'server-params')).toEqual([{ type: 'server-params', params: { strength: 0.7, prompt: 'from OSC' } }]);
		expect(t.types()).not.toContain('server-error');
		expect(t.client.state).toBe('connected');
	});

	it('says new_source with the first frame of another input, and only then', async () => {
		let source = 1;
		t = setup({ sourceId: () => source });
		t.client.connect();
		accept(t);
		const statuses: unknown[] = [];
		for (const next of [1, 1, 2, 2]) {
			source = next;
			t.sock.sent.length = 0;
			t.sock.msg({ status: 'send_frame' });
			await flush();
			statuses.push(JSON.parse(t.sock.sent[0] as string));
		}
		expect(statuses).toEqual([
			{ status: 'next_frame' },
			{ status: 'next_frame' },
			{ status: 'next_frame', new_source: true },
			{ status: 'next_frame' }
		]);
	});

	it('captures only when asked: one frame per send_frame', async () => {
		t.client.connect();
		accept(t);
		await flush();
		expect(t.frameCalls).toBe(0);
		t.sock.msg({ status: 'wait' });
		await flush();
		expect(t.frameCalls).toBe(0);
		for (let i = 0; i < 3; i++) {
			t.sock.msg({ status: 'send_frame' });
			await flush();
			t.sock.msg({ status: 'wait' });
		}
		expect(t.frameCalls).toBe(3);
		expect(t.sock.sent.length).toBe(9);
	});

	it('holds its answers while the camera goes over WebRTC, and answers the waiting request when released', async () => {
		t.client.holdFrames(true);
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'send_frame' });
		await flush();
		expect(t.frameCalls).toBe(0);
		expect(t.sock.sent).toEqual([]);
		t.client.holdFrames(false);
		await flush();
		expect(t.frameCalls).toBe(1);
		expect(t.sock.sent.map((m) => (typeof m === 'string' ? JSON.parse(m) : m))).toEqual([
			{ status: 'next_frame' },
			{ prompt: 'a cat', steps: 4 },
			new Uint8Array([0xff, 0xd8, 1, 2, 3])
		]);
	});

	it('sends the current params with each frame', async () => {
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'send_frame' });
		await flush();
		t.setParams({ prompt: 'a dog', steps: 2 });
		t.sock.msg({ status: 'send_frame' });
		await flush();
		expect(JSON.parse(t.sock.sent[4] as string)).toEqual({ prompt: 'a dog', steps: 2 });
	});

	it('sends an empty binary message, after a short pause, when there is no frame yet', async () => {
		t.setFrame(null);
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'send_frame' });
		await flush();
		expect(t.sock.sent.length).toBe(0);
		t.timers.advance(100);
		await flush();
		expect(t.sock.sent.length).toBe(3);
		expect((t.sock.sent[2] as ArrayBuffer).byteLength).toBe(0);
		expect(t.events.find((e) => e.type === 'frame-sent')).toMatchObject({ empty: true, bytes: 0 });
	});

	it('text pipelines send only next_frame and params', async () => {
		t = setup({ inputMode: 'text', getFrame: undefined });
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'send_frame' });
		await flush();
		expect(t.sock.sent.length).toBe(2);
		expect(t.frameCalls).toBe(0);
	});

	it('sends nothing when the socket closed while the frame was being encoded', async () => {
		let release!: (f: Uint8Array) => void;
		t = setup({ getFrame: () => new Promise((r) => (release = r)) });
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'send_frame' });
		t.client.stop();
		release(new Uint8Array([1]));
		await flush();
		expect(t.sock.sent.length).toBe(0);
	});

	it('reports a non-fatal server error and keeps going', async () => {
		t.client.connect();
		accept(t);
		// The server's wording for a parameter out of range.
		const message = "Invalid parameter 'steps': Input should be less than or equal to 15";
		t.sock.msg({ status: 'error', message });
		expect(t.events.at(-1)).toEqual({ type: 'server-error', message });
		expect(t.client.state).toBe('connected');
		t.sock.msg({ status: 'send_frame' });
		await flush();
		expect(t.sock.sent.length).toBe(3);
		// A later plain drop is not blamed on the old error.
		t.sock.serverClose(1006);
		expect(t.ended()).toMatchObject({ reason: 'lost' });
	});

	it('ends with "full" on "Server is full"', () => {
		t.client.connect();
		t.sock.open();
		t.sock.msg({ status: 'error', message: 'Server is full' });
		expect(t.ended()).toMatchObject({ reason: 'full', message: 'Server is full' });
		expect(t.sock.closedWith).not.toBeNull();
		t.sock.serverClose();
		expect(t.events.filter((e) => e.type === 'ended').length).toBe(1);
	});

	it('ends with "timeout" on a timeout message', () => {
		t.client.connect();
		accept(t);
		t.sock.msg({ status: 'timeout', message: 'Idle for 60 s' });
		expect(t.ended()).toMatchObject({ reason: 'timeout', message: 'Idle for 60 s' });
		expect(t.client.state).toBe('ended');
	});

	it('ends with "error" when an error is followed by a close (e.g. duplicate user id)', () => {
		t.client.connect();
		t.sock.open();
		const message = 'This user id is already connected; open a new session with a new id'; // the server's words
		t.sock.msg({ status: 'error', message });
		t.sock.serverClose(1008);
		expect(t.ended()).toMatchObject({ reason: 'error', message, code: 1008 });
	});

	it('ends with "unreachable" when the connection is refused', () => {
		t.client.connect();
		t.sock.fail();
		expect(t.ended()).toMatchObject({ reason: 'unreachable' });
		expect(t.client.state).toBe('ended');
	});

	it('ends with "unreachable" after the connect timeout, and closes the socket', () => {
		t.client.connect();
		t.timers.advance(4999);
		expect(t.client.state).toBe('connecting');
		t.timers.advance(1);
		expect(t.ended()).toMatchObject({ reason: 'unreachable' });
		expect(t.ended()!.message).toMatch(/5 s/);
		expect(t.sock.closedWith).not.toBeNull();
	});

	it('treats an open socket without any message as not yet connected', () => {
		t.client.connect();
		t.sock.open();
		t.timers.advance(5000);
		expect(t.ended()).toMatchObject({ reason: 'unreachable' });
	});

	it('ends with "lost" when an accepted connection drops', () => {
		t.client.connect();
		accept(t);
		t.sock.serverClose(1011, 'boom');
		expect(t.ended()).toMatchObject({ reason: 'lost', message: 'Connection closed: boom' });
	});

	it('stop() closes the socket once and reports "stopped"', () => {
		t.client.connect();
		accept(t);
		t.client.stop();
		t.client.stop();
		expect(t.sock.closedWith?.[0]).toBe(1000);
		expect(t.events.filter((e) => e.type === 'ended')).toEqual([{ type: 'ended', reason: 'stopped', message: '', code: undefined }]);
		expect(t.client.socketReadyState).toBe(3);
		// Late messages from the server are ignored.
		t.sock.msg({ status: 'send_frame' });
		expect(t.sock.sent.length).toBe(0);
	});

	it('ignores garbage and binary messages', () => {
		t.client.connect();
		accept(t);
		t.sock.msg('not json');
		t.sock.onmessage?.({ data: new ArrayBuffer(3) });
		t.sock.msg({ status: 'something-new' });
		expect(t.client.state).toBe('connected');
	});

	it('cannot connect twice', () => {
		t.client.connect();
		expect(() => t.client.connect()).toThrow();
	});
});

describe('socketUrl', () => {
	it('uses ws or wss like the page', () => {
		expect(socketUrl({ protocol: 'http:', host: 'localhost:7860' }, 'abc')).toBe('ws://localhost:7860/api/ws/abc');
		expect(socketUrl({ protocol: 'https:', host: '10.0.0.2:7860' }, 'a b')).toBe('wss://10.0.0.2:7860/api/ws/a%20b');
	});
});
