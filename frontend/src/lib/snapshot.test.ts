import { describe, expect, it } from 'vitest';
import { embedJpegMetadata, exifDate, readExif, snapshotFileName } from './snapshot';

// SOI, APP0 JFIF, a fake DQT, SOS, some data, EOI.
const jpeg = new Uint8Array([
	0xff, 0xd8,
	0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00,
	0xff, 0xfe, 0x00, 0x05, 0x6f, 0x6c, 0x64, // old COM "old"
	0xff, 0xdb, 0x00, 0x04, 0x01, 0x02,
	0xff, 0xda, 0x00, 0x02, 0x11, 0x22, 0x33,
	0xff, 0xd9
]);

describe('snapshot metadata', () => {
	const date = new Date(2026, 10, 21, 9, 5, 7);
	const params = { prompt: 'a cat in a hat, ünïcödé ✨', seed: 42, steps: 4, guidance_scale: 0.2 };

	it('names files with pipeline, seed and timestamp', () => {
		expect(snapshotFileName('LCM img2img (tiny)', 42, date)).toBe('live-diffusion_lcm-img2img-tiny_seed42_20261121-090507.jpg');
		expect(snapshotFileName('', undefined, date)).toBe('live-diffusion_output_20261121-090507.jpg');
		expect(exifDate(date)).toBe('2026:11:21 09:05:07');
	});

	it('embeds prompt, seed and params as EXIF and a comment, keeping the image data', () => {
		const out = embedJpegMetadata(jpeg, { pipeline: 'img2img', params, date });
		expect(out[0]).toBe(0xff);
		expect(out[1]).toBe(0xd8);
		// JFIF APP0 stays first.
		expect([out[2], out[3]]).toEqual([0xff, 0xe0]);
		// Scan data and EOI are untouched at the end.
		expect(Array.from(out.slice(-9))).toEqual([0xff, 0xda, 0x00, 0x02, 0x11, 0x22, 0x33, 0xff, 0xd9]);
		const tags = readExif(out);
		expect(tags['10e']).toBe(params.prompt); // ImageDescription
		expect(tags['131']).toBe('Live Diffusion');
		expect(tags['9003']).toBe('2026:11:21 09:05:07');
		expect(JSON.parse(tags['9286'])).toEqual({ pipeline: 'img2img', ...params });
		expect(JSON.parse(tags.comment)).toEqual({ pipeline: 'img2img', ...params });
		// The old comment is gone, the DQT is kept.
		expect(new TextDecoder().decode(out)).not.toContain('old');
		expect(indexOfSeq(out, [0xff, 0xdb, 0x00, 0x04, 0x01, 0x02])).toBeGreaterThan(0);
	});

	it('replaces earlier metadata when run twice', () => {
		const once = embedJpegMetadata(jpeg, { pipeline: 'a', params: { prompt: 'x' }, date });
		const twice = embedJpegMetadata(once, { pipeline: 'b', params: { prompt: 'y' }, date });
		expect(readExif(twice)['10e']).toBe('y');
		expect(countSeq(twice, [0xff, 0xe1])).toBe(1);
	});

	it('survives a prompt too large for EXIF', () => {
		const out = embedJpegMetadata(jpeg, { pipeline: 'a', params: { prompt: 'x'.repeat(100_000) }, date });
		expect(out[0]).toBe(0xff);
		expect(out.length).toBeLessThan(jpeg.length + 70_000);
	});

	it('leaves non-JPEG data alone', () => {
		const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47]);
		expect(embedJpegMetadata(png, { pipeline: 'a', params: {} })).toBe(png);
	});
});

function indexOfSeq(a: Uint8Array, s: number[]) {
	outer: for (let i = 0; i <= a.length - s.length; i++) {
		for (let j = 0; j < s.length; j++) if (a[i + j] !== s[j]) continue outer;
		return i;
	}
	return -1;
}
function countSeq(a: Uint8Array, s: number[]) {
	let n = 0;
	for (let i = 0; i <= a.length - s.length; i++) if (s.every((v, j) => a[i + j] === v)) n++;
	return n;
}
