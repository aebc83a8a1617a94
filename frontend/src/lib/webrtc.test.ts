import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { WebRtcLink, type WebRtcLinkOptions } from './webrtc';

class FakeChannel {
	label = '';
	readyState = 'connecting';
	sent: string[] = [];
	onopen: (() => void) | null = null;
	onmessage: ((ev: { data: unknown }) => void) | null = null;
	send(data: string) {
		this.sent.push(data);
	}
}

/** The parts of RTCPeerConnection the link uses, played by the test. */
class FakePeerConnection {
	static last: FakePeerConnection;
	connectionState = 'new';
	iceGatheringState = 'complete';
	localDescription: { type: string; sdp: string } | null = null;
	remoteDescription: unknown = null;
	closed = false;
	transceivers: unknown[][] = [];
	channel = new FakeChannel();
	ontrack: ((ev: { track: FakeTrack }) => void) | null = null;
	onconnectionstatechange: (() => void) | null = null;
	constructor(readonly config: unknown) {
		FakePeerConnection.last = this;
	}
	addTransceiver(...args: unknown[]) {
		this.transceivers.push(args);
	}
	createDataChannel(label: string) {
		this.channel.label = label;
		return this.channel;
	}
	async createOffer() {
		return { type: 'offer', sdp: 'v=0 offer' };
	}
	async setLocalDescription(d: { type: string; sdp: string }) {
		this.localDescription = d;
	}
	async setRemoteDescription(d: unknown) {
		this.remoteDescription = d;
	}
	addEventListener() {}
	removeEventListener() {}
	close() {
		this.closed = true;
	}
	// --- the test's side
	state(s: string) {
		this.connectionState = s;
		this.onconnectionstatechange?.();
	}
	openChannel() {
		this.channel.readyState = 'open';
		this.channel.onopen?.();
	}
}

class FakeTrack {
	onunmute: (() => void) | null = null;
}

function setup(answer: { status: number; body: unknown } = { status: 200, body: { type: 'answer', sdp: 'v=0 answer' } }) {
	const fetched: { url: string; body: unknown }[] = [];
	vi.stubGlobal('RTCPeerConnection', FakePeerConnection);
	vi.stubGlobal('MediaStream', class {
		constructor(readonly tracks: unknown[]) {}
	});
	vi.stubGlobal('fetch', async (url: string, init: { body: string }) => {
		fetched.push({ url, body: JSON.parse(init.body) });
		return { ok: answer.status < 400, status: answer.status, json: async () => answer.body };
	});
	const events: string[] = [];
	const options: WebRtcLinkOptions = {
		userId: 'u-1',
		streamToken: 'tok-1',
		iceServers: [{ urls: 'stun:stun.test:3478' }],
		track: { kind: 'video' } as MediaStreamTrack,
		params: () => ({ prompt: 'a cat' }),
		onOutput: () => events.push('output'),
		onServerMessage: (level, message) => events.push(`${level}: ${message}`),
		onFailed: (reason) => events.push(`failed: ${reason}`)
	};
	const link = new WebRtcLink(options);
	link.start();
	return { link, events, fetched, pc: () => FakePeerConnection.last };
}

describe('WebRtcLink', () => {
	beforeEach(() => vi.useFakeTimers());
	afterEach(() => {
		vi.useRealTimers();
		vi.unstubAllGlobals();
	});

	it('offers the track (sendrecv) and a params channel with the token, and takes the answer', async () => {
		const t = setup();
		await vi.advanceTimersByTimeAsync(0);
		const pc = t.pc();
		expect(pc.config).toEqual({ iceServers: [{ urls: 'stun:stun.test:3478' }] });
		expect(pc.transceivers).toEqual([[{ kind: 'video' }, { direction: 'sendrecv' }]]);
		expect(pc.channel.label).toBe('params');
		expect(t.fetched).toEqual([{ url: '/api/webrtc/u-1', body: { sdp: 'v=0 offer', type: 'offer', stream_token: 'tok-1' } }]);
		expect(pc.remoteDescription).toEqual({ type: 'answer', sdp: 'v=0 answer' });
	});

	it('sends all the parameters when the channel opens, then only changes; passes on the server messages', async () => {
		const t = setup();
		await vi.advanceTimersByTimeAsync(0);
		const pc = t.pc();
		t.link.sendParams({ prompt: 'too early' });
		pc.openChannel();
		t.link.sendParams({ prompt: 'a cat' });
		t.link.sendParams({ prompt: 'a dog' });
		expect(pc.channel.sent).toEqual([JSON.stringify({ prompt: 'a cat' }), JSON.stringify({ prompt: 'a dog' })]);
		pc.channel.onmessage?.({ data: JSON.stringify({ status: 'error', message: "Invalid parameter 'steps'" }) });
		pc.channel.onmessage?.({ data: 'not json' });
		expect(t.events).toEqual(["error: Invalid parameter 'steps'"]);
	});

	it("fails with the server's reason when the offer is refused", async () => {
		const t = setup({ status: 400, body: { detail: 'The offer has no video: send the camera as a video track.' } });
		await vi.advanceTimersByTimeAsync(0);
		expect(t.events).toEqual(['failed: the server refused the offer: The offer has no video: send the camera as a video track (HTTP 400)']);
		expect(t.pc().closed).toBe(true);
	});

	it('fails when no output frame comes within 10 s of connecting, and not once one came', async () => {
		const t = setup();
		await vi.advanceTimersByTimeAsync(0);
		t.pc().state('connected');
		await vi.advanceTimersByTimeAsync(10_000);
		expect(t.events).toEqual(['failed: no output frame came within 10 s of connecting']);

		const u = setup();
		await vi.advanceTimersByTimeAsync(0);
		const track = new FakeTrack();
		u.pc().ontrack?.({ track });
		u.pc().state('connected');
		track.onunmute?.();
		await vi.advanceTimersByTimeAsync(60_000);
		expect(u.events).toEqual(['output']);
	});

	it('fails when the connection is not up within 10 s, or fails', async () => {
		const t = setup();
		await vi.advanceTimersByTimeAsync(10_000);
		expect(t.events).toEqual(['failed: no connection within 10 s']);

		const u = setup();
		await vi.advanceTimersByTimeAsync(0);
		u.pc().state('failed');
		expect(u.events).toEqual(['failed: the connection failed (ICE found no network path to the server: a TURN server in its --ice-servers may help)']);
	});

	it('close() says nothing and stops the timers', async () => {
		const t = setup();
		t.link.close();
		await vi.advanceTimersByTimeAsync(60_000);
		expect(t.events).toEqual([]);
		expect(t.pc().closed).toBe(true);
	});
});
