import { describe, expect, it } from 'vitest';
import { embedJpegMetadata, exifDate, snapshotFileName } from './snapshot';

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

	it('names files with pipeline, seed and timestamp', () => {
		expect(snapshotFileName('LCM img2img (tiny)', 42, date)).toBe('live-diffusion_lcm-img2img-tiny_seed42_20261121-090507.jpg');
		expect(snapshotFileName('', undefined, date)).toBe('live-diffusion_output_20261121-090507.jpg');
		expect(exifDate(date)).toBe('2026:11:21 09:05:07');
	});

	it('embeds prompt, seed and params as EXIF and a comment, keeping the image data', () => {
		const meta = { pipeline: 'p', params: { prompt: 'é', seed: 1 }, date, software: 'S' };
		const json = '{"pipeline":"p","prompt":"é","seed":1}'; // 38 characters
		const out = embedJpegMetadata(jpeg, meta);
		const app0 = Array.from(jpeg.slice(2, 20));
		const com = [0xff, 0xfe, ...u16(2 + utf8(json).length), ...utf8(json)];
		const rest = Array.from(jpeg.slice(27)); // after the old comment: the DQT, the scan, EOI
		expect(Array.from(out)).toEqual([0xff, 0xd8, ...app0, ...EXPECTED_EXIF, ...com, ...rest]);
	});

	it('replaces earlier metadata when run twice', () => {
		const once = embedJpegMetadata(jpeg, { pipeline: 'a', params: { prompt: 'x' }, date });
		const b = { pipeline: 'b', params: { prompt: 'y' }, date };
		expect(embedJpegMetadata(once, b)).toEqual(embedJpegMetadata(jpeg, b));
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

// The APP1 segment `embedJpegMetadata(jpeg, { pipeline: 'p', params: { prompt: 'é', seed: 1 }, date, software: 'S' })`
// must write, laid out by hand from the EXIF 2.3 / TIFF 6.0 specifications (big-endian "MM"; offsets
// count from the TIFF header; a value of 4 bytes or less sits in its entry, a longer one in the data
// after the IFD; entries in tag order). Readers (Pillow, exiftool) read exactly this back.
const DATE = '2026:11:21 09:05:07\0'; // 20 bytes
const USER_COMMENT = [...ascii('UNICODE\0'), ...utf16be('{"pipeline":"p","prompt":"é","seed":1}')]; // 8 + 76 bytes
const TIFF = [
	...ascii('MM'), ...u16(42), ...u32(8), // header: IFD0 at 8
	// IFD0 at 8: 4 entries (2 + 4 x 12 + 4 = 54 bytes), then its data at 62
	...u16(4),
	...u16(0x010e), ...u16(2), ...u32(3), 0xc3, 0xa9, 0, 0, // ImageDescription, ASCII, "é" + NUL in the entry
	...u16(0x0131), ...u16(2), ...u32(2), ...ascii('S'), 0, 0, 0, // Software, ASCII, "S" + NUL
	...u16(0x0132), ...u16(2), ...u32(20), ...u32(62), // DateTime, ASCII, 20 bytes at 62
	...u16(0x8769), ...u16(4), ...u32(1), ...u32(82), // Exif IFD pointer, LONG: the Exif IFD is at 82
	...u32(0), // no next IFD
	...ascii(DATE), // 62..81
	// Exif IFD at 82: 2 entries (2 + 2 x 12 + 4 = 30 bytes), then its data at 112
	...u16(2),
	...u16(0x9003), ...u16(2), ...u32(20), ...u32(112), // DateTimeOriginal, ASCII, 20 bytes at 112
	...u16(0x9286), ...u16(7), ...u32(84), ...u32(132), // UserComment, UNDEFINED, 84 bytes at 132
	...u32(0),
	...ascii(DATE), // 112..131
	...USER_COMMENT // 132..215
];
const EXPECTED_EXIF = [0xff, 0xe1, ...u16(2 + 6 + TIFF.length), ...ascii('Exif\0\0'), ...TIFF];

function u16(n: number) {
	return [n >> 8, n & 0xff];
}
function u32(n: number) {
	return [...u16(n >>> 16), ...u16(n & 0xffff)];
}
function ascii(s: string) {
	return Array.from(s, (c) => c.charCodeAt(0));
}
function utf8(s: string) {
	return Array.from(new TextEncoder().encode(s));
}
function utf16be(s: string) {
	return Array.from(s).flatMap((c) => u16(c.charCodeAt(0)));
}
