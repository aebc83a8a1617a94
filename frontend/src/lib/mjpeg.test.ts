import { describe, expect, it } from 'vitest';
import { MultipartParser, boundaryOf, readMultipart } from './mjpeg';

const enc = new TextEncoder();

function part(body: Uint8Array, withLength = true, boundary = 'frame') {
	const head = `--${boundary}\r\nContent-Type: image/jpeg\r\n${withLength ? `Content-Length: ${body.length}\r\n` : ''}\r\n`;
	const out = new Uint8Array(head.length + body.length + 2);
	out.set(enc.encode(head));
	out.set(body, head.length);
	out.set([13, 10], head.length + body.length);
	return out;
}

function concat(...xs: Uint8Array[]) {
	const out = new Uint8Array(xs.reduce((a, b) => a + b.length, 0));
	let o = 0;
	for (const x of xs) {
		out.set(x, o);
		o += x.length;
	}
	return out;
}

const jpegA = new Uint8Array([0xff, 0xd8, 0x2d, 0x2d, 0x66, 0x72, 0x61, 0x6d, 0x65, 0xff, 0xd9]); // contains "--frame"
const jpegB = new Uint8Array(3000).map((_, i) => (i * 7) & 0xff);

describe('boundaryOf', () => {
	it('reads the boundary parameter', () => {
		expect(boundaryOf('multipart/x-mixed-replace;boundary=frame')).toBe('frame');
		expect(boundaryOf('multipart/x-mixed-replace; boundary="--abc"')).toBe('abc');
		expect(boundaryOf(null)).toBe('frame');
	});
});

describe('MultipartParser', () => {
	it('emits each part, using Content-Length even when the body contains the boundary', () => {
		const got: Uint8Array[] = [];
		const p = new MultipartParser('frame', (b) => got.push(b));
		p.push(concat(part(jpegA), part(jpegB)));
		expect(got).toEqual([jpegA, jpegB]);
	});

	it('handles any chunking, down to one byte at a time', () => {
		const stream = concat(part(jpegB), part(jpegA), part(jpegB));
		for (const size of [1, 2, 7, 64, 1000]) {
			const got: Uint8Array[] = [];
			const p = new MultipartParser('frame', (b) => got.push(b));
			for (let i = 0; i < stream.length; i += size) p.push(stream.subarray(i, i + size));
			expect(got).toEqual([jpegB, jpegA, jpegB]);
		}
	});

	it('emits a part as soon as its bytes arrived (no wait for the next boundary)', () => {
		const got: Uint8Array[] = [];
		const p = new MultipartParser('frame', (b) => got.push(b));
		const one = part(jpegB);
		p.push(one.subarray(0, one.length - 2));
		expect(got.length).toBe(1);
	});

	it('falls back to the next delimiter without Content-Length', () => {
		const got: Uint8Array[] = [];
		const p = new MultipartParser('frame', (b) => got.push(b));
		p.push(concat(part(jpegB, false), part(jpegB, false), enc.encode('--frame')));
		expect(got).toEqual([jpegB, jpegB]);
	});

	it('skips a preamble and a closing delimiter', () => {
		const got: Uint8Array[] = [];
		const p = new MultipartParser('frame', (b) => got.push(b));
		p.push(concat(enc.encode('junk before\r\n'), part(jpegB), enc.encode('--frame--\r\n')));
		expect(got).toEqual([jpegB]);
	});
});

describe('readMultipart', () => {
	it('reads a fetch Response to the end', async () => {
		const body = concat(part(jpegA), part(jpegB));
		const res = new Response(
			new ReadableStream({
				start(c) {
					c.enqueue(body.subarray(0, 10));
					c.enqueue(body.subarray(10));
					c.close();
				}
			}),
			{ headers: { 'content-type': 'multipart/x-mixed-replace;boundary=frame' } }
		);
		const got: Uint8Array[] = [];
		expect(await readMultipart(res, (f) => got.push(f))).toBe('ended');
		expect(got).toEqual([jpegA, jpegB]);
	});

	it('stops when aborted', async () => {
		const ac = new AbortController();
		const res = new Response(
			new ReadableStream({
				start(c) {
					c.enqueue(part(jpegA));
				}
			}),
			{ headers: { 'content-type': 'multipart/x-mixed-replace;boundary=frame' } }
		);
		const got: Uint8Array[] = [];
		const done = readMultipart(res, (f) => {
			got.push(f);
			ac.abort();
		}, ac.signal);
		expect(await done).toBe('aborted');
		expect(got.length).toBe(1);
	});
});
