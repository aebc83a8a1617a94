import { describe, expect, it } from 'vitest';
import { chooseTransport, forcedTransport } from './transport';

type Situation = Parameters<typeof chooseTransport>[0];

/** A browser with WebRTC, an image pipeline, and a server that offers both. */
const usual: Situation = {
	offered: ['webrtc', 'mjpeg'],
	forced: null,
	browserHasWebRtc: true,
	inputMode: 'image'
};

describe('forcedTransport', () => {
	it('reads ?transport=webrtc or ?transport=mjpeg, and nothing else', () => {
		expect(forcedTransport('?transport=webrtc')).toBe('webrtc');
		expect(forcedTransport('?view=x&transport=MJPEG')).toBe('mjpeg');
		expect(forcedTransport('?transport=carrier-pigeon')).toBeNull();
		expect(forcedTransport('')).toBeNull();
	});
});

describe('chooseTransport', () => {
	it('takes WebRTC when the server offers it and the browser has it', () => {
		expect(chooseTransport(usual)).toEqual({ transport: 'webrtc', reason: '', forcedAway: false });
	});

	it('takes MJPEG, and says why, when WebRTC cannot be had', () => {
		const cases: [Partial<Situation>, string][] = [
			[{ offered: ['mjpeg'] }, 'the server does not offer WebRTC'],
			[{ offered: undefined }, 'the server does not offer WebRTC'], // a server from before WebRTC
			[{ browserHasWebRtc: false }, 'this browser has no WebRTC'],
			[{ inputMode: 'text' }, 'a text pipeline has no camera to send']
		];
		for (const [change, reason] of cases) {
			expect(chooseTransport({ ...usual, ...change }), reason).toEqual({ transport: 'mjpeg', reason, forcedAway: false });
		}
	});

	it('?transport=mjpeg takes MJPEG, quietly', () => {
		expect(chooseTransport({ ...usual, forced: 'mjpeg' })).toEqual({ transport: 'mjpeg', reason: '', forcedAway: false });
	});

	it('?transport=webrtc takes WebRTC though the server does not list it, where the browser and pipeline can', () => {
		expect(chooseTransport({ ...usual, forced: 'webrtc', offered: ['mjpeg'] }).transport).toBe('webrtc');
		expect(chooseTransport({ ...usual, forced: 'webrtc', browserHasWebRtc: false })).toEqual({
			transport: 'mjpeg',
			reason: 'this browser has no WebRTC',
			forcedAway: true
		});
		expect(chooseTransport({ ...usual, forced: 'webrtc', inputMode: 'text' }).forcedAway).toBe(true);
	});
});
