/**
 * A reader for `multipart/x-mixed-replace` (MJPEG) responses.
 *
 * The page reads `/api/stream/{user_id}` with fetch() instead of pointing an <img> at it: each
 * part arrives as its own JPEG, so the page knows exactly when a frame arrived (fps and latency),
 * never shows a stale frame (Chromium keeps the previous part of a native MJPEG <img> on screen
 * until the next one completes), can hand the very same bytes to the snapshot button and to the
 * pop-out window, and notices when the stream ends.
 */

const enc = new TextEncoder();
const dec = new TextDecoder('latin1');

/** The boundary named in a Content-Type header, "frame" when absent. */
export function boundaryOf(contentType: string | null | undefined): string {
	const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType ?? '');
	const b = m ? (m[1] ?? m[2]) : 'frame';
	return b.replace(/^--/, '');
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from = 0): number {
	const n = needle.length;
	const last = hay.length - n;
	const first = needle[0];
	outer: for (let i = Math.max(0, from); i <= last; i++) {
		if (hay[i] !== first) continue;
		for (let j = 1; j < n; j++) if (hay[i + j] !== needle[j]) continue outer;
		return i;
	}
	return -1;
}

/**
 * Incremental parser: feed it chunks as they arrive, it calls `onPart` with each complete body.
 * Uses Content-Length when a part has one, else the next boundary delimiter.
 */
export class MultipartParser {
	private buf = new Uint8Array(0);
	private readonly delim: Uint8Array;
	private readonly crlf2 = enc.encode('\r\n\r\n');
	/** Body length of the part being read, once its headers are parsed. */
	private need: number | null = null;
	private headersDone = false;
	private contentType = '';

	constructor(
		boundary: string,
		private readonly onPart: (body: Uint8Array, contentType: string) => void,
		private readonly maxBuffer = 64 * 1024 * 1024
	) {
		this.delim = enc.encode('--' + boundary);
	}

	push(chunk: Uint8Array): void {
		if (chunk.length === 0) return;
		const next = new Uint8Array(this.buf.length + chunk.length);
		next.set(this.buf, 0);
		next.set(chunk, this.buf.length);
		this.buf = next;
		this.drain();
		if (this.buf.length > this.maxBuffer) {
			// Garbage or an enormous part: drop it rather than grow without bound.
			this.buf = new Uint8Array(0);
			this.headersDone = false;
			this.need = null;
		}
	}

	private drain(): void {
		for (;;) {
			if (!this.headersDone) {
				const b = indexOf(this.buf, this.delim);
				if (b < 0) {
					// Keep a tail that might be the start of a delimiter.
					const keep = Math.min(this.buf.length, this.delim.length + 2);
					this.buf = this.buf.slice(this.buf.length - keep);
					return;
				}
				const h = indexOf(this.buf, this.crlf2, b + this.delim.length);
				if (h < 0) {
					if (b > 0) this.buf = this.buf.slice(b);
					return;
				}
				const headerText = dec.decode(this.buf.subarray(b + this.delim.length, h));
				if (headerText.startsWith('--')) {
					// Closing delimiter "--frame--".
					this.buf = this.buf.slice(b + this.delim.length + 2);
					continue;
				}
				const headers = parseHeaders(headerText);
				const len = Number(headers['content-length']);
				this.need = Number.isInteger(len) && len >= 0 ? len : null;
				this.contentType = headers['content-type'] ?? '';
				this.headersDone = true;
				this.buf = this.buf.slice(h + 4);
			}
			if (this.need !== null) {
				if (this.buf.length < this.need) return;
				const body = this.buf.slice(0, this.need);
				this.buf = this.buf.slice(this.need);
				this.headersDone = false;
				this.need = null;
				this.onPart(body, this.contentType);
				continue;
			}
			// No Content-Length: the body runs to the next delimiter (preceded by CRLF).
			const d = indexOf(this.buf, this.delim);
			if (d < 0) return;
			let end = d;
			if (end >= 2 && this.buf[end - 2] === 13 && this.buf[end - 1] === 10) end -= 2;
			const body = this.buf.slice(0, end);
			this.buf = this.buf.slice(d);
			this.headersDone = false;
			this.onPart(body, this.contentType);
		}
	}
}

function parseHeaders(text: string): Record<string, string> {
	const out: Record<string, string> = {};
	for (const line of text.split(/\r?\n/)) {
		const i = line.indexOf(':');
		if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
	}
	return out;
}

export type StreamEnd = 'aborted' | 'ended' | 'error';

/**
 * Read an MJPEG response until it ends or `signal` aborts. Resolves with why it stopped.
 */
export async function readMultipart(
	res: Response,
	onFrame: (jpeg: Uint8Array) => void,
	signal?: AbortSignal
): Promise<StreamEnd> {
	if (!res.body) return 'error';
	const parser = new MultipartParser(boundaryOf(res.headers.get('content-type')), (body) => {
		if (body.length > 0) onFrame(body);
	});
	const reader = res.body.getReader();
	const onAbort = () => void reader.cancel().catch(() => {});
	signal?.addEventListener('abort', onAbort, { once: true });
	try {
		for (;;) {
			const { value, done } = await reader.read();
			if (done) return signal?.aborted ? 'aborted' : 'ended';
			if (value) parser.push(value);
		}
	} catch {
		return signal?.aborted ? 'aborted' : 'error';
	} finally {
		signal?.removeEventListener('abort', onAbort);
	}
}
