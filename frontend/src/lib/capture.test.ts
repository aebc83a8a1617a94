import { describe, expect, it } from 'vitest';
import { computeDrawRect, fitSize, sourceSize } from './capture';

describe('computeDrawRect cover (crop to fill)', () => {
	it('crops the sides of a wide source into a square', () => {
		expect(computeDrawRect(640, 480, 512, 512, 'cover')).toEqual({
			sx: 80,
			sy: 0,
			sw: 480,
			sh: 480,
			dx: 0,
			dy: 0,
			dw: 512,
			dh: 512
		});
	});
	it('crops top and bottom of a tall source into a landscape target', () => {
		const r = computeDrawRect(720, 1280, 768, 512, 'cover');
		expect(r.sw).toBe(720);
		expect(r.sh).toBeCloseTo(480);
		expect(r.sy).toBeCloseTo(400);
		expect(r.sx).toBe(0);
		expect([r.dx, r.dy, r.dw, r.dh]).toEqual([0, 0, 768, 512]);
	});
	it('keeps the aspect ratio of the cropped region equal to the target', () => {
		for (const [sw, sh, dw, dh] of [
			[1920, 1080, 512, 512],
			[320, 240, 1024, 256],
			[1000, 10, 8, 800]
		]) {
			const r = computeDrawRect(sw, sh, dw, dh, 'cover');
			expect(r.sw / r.sh).toBeCloseTo(dw / dh, 6);
			expect(r.sx).toBeGreaterThanOrEqual(0);
			expect(r.sy).toBeGreaterThanOrEqual(0);
			expect(r.sx + r.sw).toBeLessThanOrEqual(sw + 1e-9);
			expect(r.sy + r.sh).toBeLessThanOrEqual(sh + 1e-9);
		}
	});
	it('is the identity for equal sizes', () => {
		expect(computeDrawRect(512, 512, 512, 512)).toEqual({ sx: 0, sy: 0, sw: 512, sh: 512, dx: 0, dy: 0, dw: 512, dh: 512 });
	});
});

describe('computeDrawRect contain (fit)', () => {
	it('letterboxes a wide source into a square', () => {
		expect(computeDrawRect(640, 480, 512, 512, 'contain')).toEqual({
			sx: 0,
			sy: 0,
			sw: 640,
			sh: 480,
			dx: 0,
			dy: 64,
			dw: 512,
			dh: 384
		});
	});
	it('pillarboxes a tall source', () => {
		const r = computeDrawRect(480, 640, 512, 512, 'contain');
		expect([r.dx, r.dy, r.dw, r.dh]).toEqual([64, 0, 384, 512]);
	});
	it('upscales a small source', () => {
		const r = computeDrawRect(160, 120, 640, 480, 'contain');
		expect([r.dx, r.dy, r.dw, r.dh]).toEqual([0, 0, 640, 480]);
	});
	it('rejects empty sizes', () => {
		expect(() => computeDrawRect(0, 480, 512, 512)).toThrow(RangeError);
		expect(() => computeDrawRect(640, 480, 512, NaN)).toThrow(RangeError);
	});
});

describe('fitSize', () => {
	it('fits an aspect ratio into a box in multiples of 8', () => {
		expect(fitSize(16, 9, 1024, 1024)).toEqual({ width: 1024, height: 576 });
		expect(fitSize(9, 16, 1024, 1024)).toEqual({ width: 576, height: 1024 });
		expect(fitSize(4, 3, 512, 512)).toEqual({ width: 512, height: 384 });
		expect(fitSize(1, 1, 700, 500)).toEqual({ width: 496, height: 496 });
	});
	it('never goes below one multiple', () => {
		expect(fitSize(1000, 1, 64, 64)).toEqual({ width: 64, height: 8 });
	});
});

describe('sourceSize', () => {
	it('reads width/height of plain drawables', () => {
		expect(sourceSize({ width: 320, height: 240 } as unknown as CanvasImageSource)).toEqual({ width: 320, height: 240 });
		expect(sourceSize({} as unknown as CanvasImageSource)).toEqual({ width: 0, height: 0 });
	});
});
