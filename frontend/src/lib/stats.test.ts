import { describe, expect, it } from 'vitest';
import { FrameStats } from './stats';

describe('FrameStats', () => {
	it('measures fps over the window and decays when frames stop', () => {
		const s = new FrameStats(3000);
		expect(s.fps(0)).toBe(0);
		for (let t = 0; t <= 2000; t += 250) s.frameShown(t);
		expect(s.fps(2000)).toBeCloseTo(4);
		expect(s.fps(2500)).toBeLessThan(4);
		expect(s.fps(10000)).toBe(0);
	});

	it('matches outputs to inputs in order, even when the next input leaves first', () => {
		// The timeline seen in Chromium against the real server: input n+1 is sent a moment
		// before output n is on screen.
		const s = new FrameStats();
		expect(s.latency()).toBeNull();
		s.frameSent(697);
		s.frameSent(939);
		s.frameShown(941, s.frameArrived());
		expect(s.latency()).toBe(244);
		s.frameSent(1127);
		s.frameShown(1128, s.frameArrived());
		expect(s.latency()).toBeCloseTo((244 + 189) / 2);
		s.frameSent(1291);
		s.frameShown(1291, s.frameArrived());
		expect(s.latency()).toBeCloseTo((244 + 189 + 164) / 3);
	});

	it('forgets inputs that will get no output', () => {
		const s = new FrameStats();
		s.frameSent(0);
		s.dropInFlight();
		s.frameSent(1000);
		s.frameShown(1200, s.frameArrived());
		expect(s.latency()).toBe(200);
	});

	it('keeps at most a few inputs in flight', () => {
		const s = new FrameStats(3000, 10, 2);
		s.frameSent(0);
		s.frameSent(100);
		s.frameSent(200);
		expect(s.frameArrived()).toBe(100);
		expect(s.frameArrived()).toBe(200);
		expect(s.frameArrived()).toBeNull();
		s.frameShown(300, null);
		expect(s.latency()).toBeNull();
		s.reset();
		expect(s.fps(300)).toBe(0);
	});
});
