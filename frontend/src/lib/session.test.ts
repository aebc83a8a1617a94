import { describe, expect, it } from 'vitest';
import type { SocketLike } from './protocol';
import type { ParamValues } from './schema';
import { LiveSession, type SessionHooks } from './session.svelte';
import type { Transport } from './transport';
import type { WebRtcLinkLike, WebRtcLinkOptions } from './webrtc';

/** A websocket the test plays the server of. */
class FakeSocket implements SocketLike {
	readyState = 0;
	binaryType = 'blob';
	onopen: ((ev: unknown) => void) | null = null;
	onmessage: ((ev: { data: unknown }) => void) | null = null;
	onerror: ((ev: unknown) => void) | null = null;
	onclose: ((ev: { code: number; reason: string }) => void) | null = null;
	sent: unknown[] = [];
	constructor(readonly url: string) {}
	send(data: unknown) {
		this.sent.push(data);
	}
	close() {
		this.readyState = 3;
	}
	accept() {
		this.readyState = 1;
		this.msg({ status: 'connected' });
	}
	msg(obj: unknown) {
		this.onmessage?.({ data: JSON.stringify(obj) });
	}
}

const flush = () => new Promise((r) => setTimeout(r, 0));

/** A WebRTC link the test plays the browser and the server of. */
class FakeLink implements WebRtcLinkLike {
	started = false;
	closed = false;
	sent: ParamValues[] = [];
	constructor(readonly options: WebRtcLinkOptions) {}
	start() {
		this.started = true;
	}
	sendParams(values: ParamValues) {
		this.sent.push(values);
	}
	newSources = 0;
	sendNewSource() {
		this.newSources += 1;
	}
	close() {
		this.closed = true;
	}
}

const fakeTrack = { kind: 'video' } as MediaStreamTrack;
const fakeStream = {} as MediaStream;

/** A session whose hooks record what they were told; `prepare` resolves when the test says. */
function setup({
	mode = 'image' as 'image' | 'text',
	params = (): ParamValues => ({ prompt: 'a cat' }),
	transport = 'mjpeg' as Transport,
	track = fakeTrack as MediaStreamTrack | null,
	more = {} as Partial<SessionHooks>
} = {}) {
	const log: string[] = [];
	const sockets: FakeSocket[] = [];
	const links: FakeLink[] = [];
	let ready: (ok: boolean) => void = () => {};
	let stillWanted: () => boolean = () => true;
	const hooks: SessionHooks = {
		prepare: (wanted) => {
			stillWanted = wanted;
			log.push('prepare');
			return new Promise((r) => (ready = r));
		},
		inputMode: () => mode,
		params,
		frame: async () => new Blob([new Uint8Array([0xff, 0xd8, 0xff, 0xd9])], { type: 'image/jpeg' }),
		transport: () => transport,
		inputTrack: () => track,
		iceServers: () => [{ urls: 'stun:stun.test:3478' }],
		onConnecting: (id) => log.push(`connecting ${id.length}`),
		onLive: () => log.push('live'),
		onOutputVideo: () => log.push('output video'),
		onFallback: (reason) => log.push(`fallback: ${reason}`),
		onInputSent: () => log.push('input sent'),
		onServerError: (m) => log.push(`server error: ${m}`),
		onEnded: (reason, message) => log.push(`ended ${reason}${message ? `: ${message}` : ''}`),
		...more
	};
	const session = new LiveSession(hooks, {
		page: { protocol: 'https:', host: 'studio.test:7860' },
		createSocket: (url) => {
			const s = new FakeSocket(url);
			sockets.push(s);
			return s;
		},
		createWebRtcLink: (options) => {
			const link = new FakeLink(options);
			links.push(link);
			return link;
		}
	});
	return { session, log, sockets, links, ready: (ok: boolean) => ready(ok), stillWanted: () => stillWanted() };
}

describe('LiveSession', () => {
	it('prepares, connects under a new user id, goes live and sends a frame on send_frame', async () => {
		const t = setup();
		void t.session.start();
		expect(t.session.phase).toBe('starting');
		t.ready(true);
		await flush();
		expect(t.session.phase).toBe('connecting');
		expect(t.sockets[0].url).toBe(`wss://studio.test:7860/api/ws/${t.session.userId}`);
		t.sockets[0].accept();
		expect(t.session.phase).toBe('live');

		t.sockets[0].msg({ status: 'send_frame' });
		await flush();
		await flush();
		expect(t.sockets[0].sent.slice(0, 2)).toEqual([JSON.stringify({ status: 'next_frame' }), JSON.stringify({ prompt: 'a cat' })]);
		expect(t.session.lastSentParams).toEqual({ prompt: 'a cat' });
		expect(t.session.framesSent).toBe(1);
		expect(t.log).toEqual(['prepare', 'connecting 36', 'live', 'input sent']);

		t.session.stop();
		expect(t.session.phase).toBe('idle');
		expect(t.log.at(-1)).toBe('ended stopped');
		expect(t.session.socketState).toBe(3);
	});

	it('Stop while preparing ends the start: no socket, and the preparation is told', async () => {
		const t = setup();
		void t.session.start();
		t.session.stop();
		expect(t.session.phase).toBe('idle');
		expect(t.stillWanted()).toBe(false);
		t.ready(true); // the camera came up after all: too late
		await flush();
		expect(t.sockets).toHaveLength(0);
		expect(t.session.phase).toBe('idle');
		expect(t.log).toEqual(['prepare', 'ended stopped']);
	});

	it('a failed preparation (no source) goes back to idle without a session', async () => {
		const t = setup();
		void t.session.start();
		t.ready(false);
		await flush();
		expect(t.session.phase).toBe('idle');
		expect(t.sockets).toHaveLength(0);
		expect(t.log).toEqual(['prepare']);
	});

	it('reports server errors and the end the server chose', async () => {
		const t = setup();
		void t.session.start();
		t.ready(true);
		await flush();
		t.sockets[0].accept();
		t.sockets[0].msg({ status: 'error', message: 'CUDA out of memory' });
		expect(t.session.phase).toBe('live');
		t.sockets[0].msg({ status: 'timeout', message: 'Session timed out: no frame or parameters for 10 s' });
		expect(t.session.phase).toBe('idle');
		expect(t.log.slice(-2)).toEqual(['server error: CUDA out of memory', 'ended timeout: Session timed out: no frame or parameters for 10 s']);
	});

	it('a text pipeline counts only sends whose parameters changed (only those get an output)', async () => {
		let prompt = 'a cat';
		const t = setup({ mode: 'text', params: () => ({ prompt }) });
		void t.session.start();
		t.ready(true);
		await flush();
		t.sockets[0].accept();
		const ask = async () => {
			t.sockets[0].msg({ status: 'send_frame' });
			await flush();
		};
		await ask();
		await ask();
		prompt = 'a dog';
		await ask();
		expect(t.session.framesSent).toBe(2);
		expect(t.log.filter((l) => l === 'input sent')).toHaveLength(2);
		expect(t.sockets[0].sent.filter((m) => typeof m !== 'string')).toHaveLength(0); // no images
	});

	it('sends the presets when the session starts (if any) and when they change while it is live', async () => {
		const presets = [{ name: 'Soft', params: { prompt: 'a dog' } }];
		const t = setup();
		t.session.sendPresets(presets); // idle: nothing to send them to
		void t.session.start();
		t.ready(true);
		await flush();
		t.sockets[0].accept();
		expect(t.sockets[0].sent).toEqual([]); // the setup's hooks have no presets
		t.session.sendPresets(presets);
		expect(t.sockets[0].sent).toEqual([JSON.stringify({ status: 'presets', presets })]);
		t.session.stop();
		t.session.sendPresets(presets);
		expect(t.sockets[0].sent).toHaveLength(1);

		const withPresets = setup({ more: { presets: () => presets } });
		void withPresets.session.start();
		withPresets.ready(true);
		await flush();
		withPresets.sockets[0].accept();
		expect(withPresets.sockets[0].sent).toEqual([JSON.stringify({ status: 'presets', presets })]);
	});

	it('passes on the parameters the server changed from outside the page (OSC)', async () => {
		const received: Record<string, unknown>[] = [];
		const t = setup({ more: { onServerParams: (params) => received.push(params) } });
		void t.session.start();
		t.ready(true);
		await flush();
		t.sockets[0].accept();
		t.sockets[0].msg({ status: 'params', params: { prompt: 'from OSC' } });
		expect(received).toEqual([{ prompt: 'from OSC' }]);
		expect(t.session.phase).toBe('live');
	});

	it('start while a session runs does nothing; toggle stops it', async () => {
		const t = setup();
		void t.session.start();
		t.ready(true);
		await flush();
		t.sockets[0].accept();
		await t.session.start();
		expect(t.sockets).toHaveLength(1);
		t.session.toggle();
		expect(t.session.phase).toBe('idle');
	});

	describe('over WebRTC', () => {
		/** A WebRTC session, live; the server asked for a frame once (as it does when the peer's stream opens). */
		async function live(o: Parameters<typeof setup>[0] = {}) {
			const t = setup({ transport: 'webrtc', ...o });
			void t.session.start();
			t.ready(true);
			await flush();
			t.sockets[0].readyState = 1;
			t.sockets[0].msg({ status: 'connected', stream_token: 'tok-1' });
			t.sockets[0].msg({ status: 'send_frame' });
			await flush();
			return t;
		}

		it('starts the link with the stream token and the input track, and sends no frame over the websocket', async () => {
			const t = await live();
			expect(t.session.transport).toBe('webrtc');
			expect(t.links).toHaveLength(1);
			const link = t.links[0];
			expect(link.started).toBe(true);
			expect([link.options.userId, link.options.streamToken, link.options.track]).toEqual([t.session.userId, 'tok-1', fakeTrack]);
			expect(link.options.iceServers).toEqual([{ urls: 'stun:stun.test:3478' }]);
			expect(link.options.params()).toEqual({ prompt: 'a cat' });
			expect(t.sockets[0].sent).toEqual([]);
			link.options.onOutput(fakeStream);
			link.options.onServerMessage('error', 'Invalid parameter');
			expect(t.log).toEqual(['prepare', 'connecting 36', 'live', 'output video', 'server error: Invalid parameter']);
		});

		it('sends each change of the parameters on the link', async () => {
			const t = await live();
			t.session.paramsChanged({ prompt: 'a dog' });
			expect(t.links[0].sent).toEqual([{ prompt: 'a dog' }]);
			expect(t.session.lastSentParams).toEqual({ prompt: 'a dog' });
		});

		it('says on the link when the input switches', async () => {
			const t = await live();
			t.session.sourceChanged();
			expect(t.links[0].newSources).toBe(1);
		});

		it('falls back to MJPEG when the link fails: the held frame request is answered', async () => {
			const t = await live();
			t.links[0].options.onFailed('no connection within 10 s');
			await flush();
			await flush();
			expect(t.links[0].closed).toBe(true);
			expect(t.session.transport).toBe('mjpeg');
			expect(t.session.phase).toBe('live');
			expect(t.log.slice(-2)).toEqual(['fallback: no connection within 10 s', 'input sent']);
			expect(t.sockets[0].sent.slice(0, 2)).toEqual([JSON.stringify({ status: 'next_frame' }), JSON.stringify({ prompt: 'a cat' })]);
			// A late word from the closed link changes nothing.
			t.links[0].options.onOutput(fakeStream);
			expect(t.log).not.toContain('output video');
		});

		it('falls back to MJPEG when the input has no track', async () => {
			const t = await live({ track: null });
			expect(t.links).toHaveLength(0);
			expect(t.session.transport).toBe('mjpeg');
			expect(t.log).toContain('fallback: the input gave no video track');
		});

		it('closes the link when the session ends', async () => {
			const t = await live();
			t.session.stop();
			expect(t.links[0].closed).toBe(true);
			expect(t.session.phase).toBe('idle');
		});
	});
});
