import { describe, expect, it } from 'vitest';
import type { SocketLike } from './protocol';
import type { ParamValues } from './schema';
import { LiveSession, type SessionHooks } from './session.svelte';

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

/** A session whose hooks record what they were told; `prepare` resolves when the test says. */
function setup({ mode = 'image' as 'image' | 'text', params = (): ParamValues => ({ prompt: 'a cat' }) } = {}) {
	const log: string[] = [];
	const sockets: FakeSocket[] = [];
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
		onConnecting: (id) => log.push(`connecting ${id.length}`),
		onLive: () => log.push('live'),
		onInputSent: () => log.push('input sent'),
		onServerError: (m) => log.push(`server error: ${m}`),
		onEnded: (reason, message) => log.push(`ended ${reason}${message ? `: ${message}` : ''}`)
	};
	const session = new LiveSession(hooks, {
		page: { protocol: 'https:', host: 'studio.test:7860' },
		createSocket: (url) => {
			const s = new FakeSocket(url);
			sockets.push(s);
			return s;
		}
	});
	return { session, log, sockets, ready: (ok: boolean) => ready(ok), stillWanted: () => stillWanted() };
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
});
