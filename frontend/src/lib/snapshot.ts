/**
 * Snapshots: the output JPEG (over MJPEG exactly as the server sent it, no re-encoding; over WebRTC
 * the shown video frame, encoded by the page), with the prompt, the seed and all parameters embedded
 * as EXIF (ImageDescription = prompt, UserComment = JSON of all parameters, Software,
 * DateTimeOriginal) and as a JPEG comment (COM) with the same JSON.
 */

export interface SnapshotMeta {
	pipeline: string;
	params: Record<string, unknown>;
	date?: Date;
	software?: string;
}

const enc = new TextEncoder();

function pad(n: number, w = 2) {
	return String(n).padStart(w, '0');
}

/** "2026:11:21 13:45:07", EXIF's date format. */
export function exifDate(d: Date): string {
	return `${d.getFullYear()}:${pad(d.getMonth() + 1)}:${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** live-diffusion_<pipeline>_seed<seed>_<yyyymmdd-hhmmss>.jpg */
export function snapshotFileName(pipeline: string, seed: unknown, d: Date, ext = 'jpg'): string {
	const p =
		pipeline
			.toLowerCase()
			.replace(/[^a-z0-9]+/g, '-')
			.replace(/^-+|-+$/g, '')
			.slice(0, 40) || 'output';
	const s = typeof seed === 'number' || (typeof seed === 'string' && /^\d+$/.test(seed)) ? `_seed${seed}` : '';
	const t = `${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`;
	return `live-diffusion_${p}${s}_${t}.${ext}`;
}

interface Entry {
	tag: number;
	type: number; // 2 ASCII, 4 LONG, 7 UNDEFINED
	data: Uint8Array; // for LONG: 4 bytes big-endian
}

function ascii(s: string): Uint8Array {
	// EXIF ASCII is nominally 7-bit; UTF-8 is what every reader shows correctly in practice.
	const b = enc.encode(s);
	const out = new Uint8Array(b.length + 1);
	out.set(b);
	return out;
}

function userComment(s: string): Uint8Array {
	// Character code "UNICODE\0" then UTF-16 in the file's byte order (big-endian here).
	const out = new Uint8Array(8 + s.length * 2);
	out.set(enc.encode('UNICODE\0'));
	for (let i = 0; i < s.length; i++) {
		const c = s.charCodeAt(i);
		out[8 + i * 2] = c >> 8;
		out[8 + i * 2 + 1] = c & 0xff;
	}
	return out;
}

/** A TIFF IFD at `offset` (relative to the TIFF header); returns its bytes. */
function ifd(entries: Entry[], offset: number, nextIfd = 0): Uint8Array {
	entries = [...entries].sort((a, b) => a.tag - b.tag);
	const headLen = 2 + entries.length * 12 + 4;
	let dataLen = 0;
	for (const e of entries) if (e.data.length > 4) dataLen += e.data.length + (e.data.length & 1);
	const out = new Uint8Array(headLen + dataLen);
	const v = new DataView(out.buffer);
	v.setUint16(0, entries.length);
	let dataOff = headLen;
	entries.forEach((e, i) => {
		const p = 2 + i * 12;
		v.setUint16(p, e.tag);
		v.setUint16(p + 2, e.type);
		const count = e.type === 4 ? 1 : e.data.length;
		v.setUint32(p + 4, count);
		if (e.data.length <= 4) {
			out.set(e.data, p + 8);
		} else {
			v.setUint32(p + 8, offset + dataOff);
			out.set(e.data, dataOff);
			dataOff += e.data.length + (e.data.length & 1);
		}
	});
	v.setUint32(2 + entries.length * 12, nextIfd);
	return out;
}

function long(n: number): Uint8Array {
	const b = new Uint8Array(4);
	new DataView(b.buffer).setUint32(0, n);
	return b;
}

/** The APP1 "Exif" segment (marker included). */
export function buildExifSegment(meta: SnapshotMeta): Uint8Array {
	const date = exifDate(meta.date ?? new Date());
	const prompt = typeof meta.params.prompt === 'string' ? meta.params.prompt : '';
	const json = JSON.stringify({ pipeline: meta.pipeline, ...meta.params });
	const ifd0Base: Entry[] = [
		{ tag: 0x010e, type: 2, data: ascii(prompt) }, // ImageDescription
		{ tag: 0x0131, type: 2, data: ascii(meta.software ?? 'Live Diffusion') }, // Software
		{ tag: 0x0132, type: 2, data: ascii(date) } // DateTime
	];
	const exifEntries: Entry[] = [
		{ tag: 0x9003, type: 2, data: ascii(date) }, // DateTimeOriginal
		{ tag: 0x9286, type: 7, data: userComment(json) } // UserComment
	];
	// TIFF header (8 bytes) then IFD0; IFD0 holds a pointer to the Exif IFD placed after it.
	const ifd0Probe = ifd([...ifd0Base, { tag: 0x8769, type: 4, data: long(0) }], 8);
	const exifOffset = 8 + ifd0Probe.length;
	const ifd0 = ifd([...ifd0Base, { tag: 0x8769, type: 4, data: long(exifOffset) }], 8);
	const exifIfd = ifd(exifEntries, exifOffset);
	const tiff = new Uint8Array(8 + ifd0.length + exifIfd.length);
	tiff.set([0x4d, 0x4d, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x08]); // "MM", 42, IFD0 at 8
	tiff.set(ifd0, 8);
	tiff.set(exifIfd, 8 + ifd0.length);
	const header = enc.encode('Exif\0\0');
	const len = 2 + header.length + tiff.length;
	if (len > 0xffff) throw new RangeError('EXIF too large');
	const seg = new Uint8Array(2 + len);
	seg[0] = 0xff;
	seg[1] = 0xe1;
	seg[2] = len >> 8;
	seg[3] = len & 0xff;
	seg.set(header, 4);
	seg.set(tiff, 4 + header.length);
	return seg;
}

/** A COM segment with UTF-8 text (cut to fit one segment). */
export function buildCommentSegment(text: string): Uint8Array {
	let b = enc.encode(text);
	if (b.length > 0xffff - 2) b = b.slice(0, 0xffff - 2);
	const seg = new Uint8Array(4 + b.length);
	seg[0] = 0xff;
	seg[1] = 0xfe;
	seg[2] = (b.length + 2) >> 8;
	seg[3] = (b.length + 2) & 0xff;
	seg.set(b, 4);
	return seg;
}

/**
 * The JPEG with metadata inserted after SOI (and after a JFIF APP0 if present); any EXIF APP1 or
 * COM already there is dropped. Returns the input unchanged when it is not a JPEG.
 */
export function embedJpegMetadata(jpeg: Uint8Array, meta: SnapshotMeta): Uint8Array {
	if (jpeg.length < 4 || jpeg[0] !== 0xff || jpeg[1] !== 0xd8) return jpeg;
	const json = JSON.stringify({ pipeline: meta.pipeline, ...meta.params });
	let exif: Uint8Array;
	try {
		exif = buildExifSegment(meta);
	} catch {
		exif = new Uint8Array(0);
	}
	const com = buildCommentSegment(json);
	const kept: Uint8Array[] = [];
	let app0: Uint8Array | null = null;
	let p = 2;
	// Walk the marker segments up to the start of scan; keep all but old EXIF/COM.
	while (p + 4 <= jpeg.length && jpeg[p] === 0xff) {
		const marker = jpeg[p + 1];
		if (marker === 0xda || marker === 0xd9) break;
		const len = (jpeg[p + 2] << 8) | jpeg[p + 3];
		const seg = jpeg.subarray(p, p + 2 + len);
		const isExif = marker === 0xe1 && len >= 8 && String.fromCharCode(...jpeg.subarray(p + 4, p + 8)) === 'Exif';
		if (marker === 0xe0 && app0 === null && kept.length === 0) app0 = seg;
		else if (!isExif && marker !== 0xfe) kept.push(seg);
		p += 2 + len;
	}
	const rest = jpeg.subarray(p);
	const parts = [jpeg.subarray(0, 2), ...(app0 ? [app0] : []), exif, com, ...kept, rest];
	const total = parts.reduce((a, b) => a + b.length, 0);
	const out = new Uint8Array(total);
	let o = 0;
	for (const part of parts) {
		out.set(part, o);
		o += part.length;
	}
	return out;
}

/** Downloads the frame with its metadata, named after the pipeline, the seed and the time. */
export function downloadSnapshot(jpeg: Uint8Array, meta: { pipeline: string; title: string; params: Record<string, unknown> }): void {
	const date = new Date();
	const bytes = embedJpegMetadata(jpeg, { pipeline: meta.pipeline, params: meta.params, date, software: `Live Diffusion (${meta.title})` });
	const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: 'image/jpeg' }));
	const a = document.createElement('a');
	a.href = url;
	a.download = snapshotFileName(meta.pipeline, meta.params.seed, date);
	document.body.append(a);
	a.click();
	a.remove();
	setTimeout(() => URL.revokeObjectURL(url), 30_000);
}
