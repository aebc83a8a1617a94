/**
 * Capture sizing: how a source frame (camera, screen, file) is placed into the pipeline's
 * width x height, and the one-frame JPEG capture done only when the server asks for a frame (over
 * WebRTC the same drawing feeds a canvas track instead).
 */

export type FitMode = 'cover' | 'contain';

export interface DrawRect {
	/** Source rectangle, in source pixels. */
	sx: number;
	sy: number;
	sw: number;
	sh: number;
	/** Destination rectangle, in canvas pixels. */
	dx: number;
	dy: number;
	dw: number;
	dh: number;
}

/**
 * `cover` crops the source to the target's aspect ratio (centred) and fills the whole target;
 * `contain` fits the whole source inside the target, centred, leaving bars.
 */
export function computeDrawRect(
	srcW: number,
	srcH: number,
	dstW: number,
	dstH: number,
	mode: FitMode = 'cover'
): DrawRect {
	if (!(srcW > 0 && srcH > 0 && dstW > 0 && dstH > 0)) {
		throw new RangeError(`invalid sizes ${srcW}x${srcH} -> ${dstW}x${dstH}`);
	}
	if (mode === 'cover') {
		const scale = Math.max(dstW / srcW, dstH / srcH);
		const sw = Math.min(srcW, dstW / scale);
		const sh = Math.min(srcH, dstH / scale);
		return { sx: (srcW - sw) / 2, sy: (srcH - sh) / 2, sw, sh, dx: 0, dy: 0, dw: dstW, dh: dstH };
	}
	const scale = Math.min(dstW / srcW, dstH / srcH);
	const dw = Math.min(dstW, srcW * scale);
	const dh = Math.min(dstH, srcH * scale);
	return { sx: 0, sy: 0, sw: srcW, sh: srcH, dx: (dstW - dw) / 2, dy: (dstH - dh) / 2, dw, dh };
}

/** The largest size with the given aspect ratio that fits in maxW x maxH, in multiples of `multiple`. */
export function fitSize(
	aspectW: number,
	aspectH: number,
	maxW: number,
	maxH: number,
	multiple = 8
): { width: number; height: number } {
	if (!(aspectW > 0 && aspectH > 0 && maxW > 0 && maxH > 0)) {
		throw new RangeError('invalid sizes');
	}
	const scale = Math.min(maxW / aspectW, maxH / aspectH);
	const floorTo = (v: number) => Math.max(multiple, Math.floor(v / multiple) * multiple);
	return { width: floorTo(aspectW * scale), height: floorTo(aspectH * scale) };
}

/** Intrinsic size of something drawable, 0x0 when it has no frame yet. */
export function sourceSize(el: CanvasImageSource): { width: number; height: number } {
	if (typeof HTMLVideoElement !== 'undefined' && el instanceof HTMLVideoElement) {
		if (el.readyState < 2) return { width: 0, height: 0 };
		return { width: el.videoWidth, height: el.videoHeight };
	}
	if (typeof HTMLImageElement !== 'undefined' && el instanceof HTMLImageElement) {
		if (!el.complete) return { width: 0, height: 0 };
		return { width: el.naturalWidth, height: el.naturalHeight };
	}
	const any = el as { width?: unknown; height?: unknown };
	const w = typeof any.width === 'number' ? any.width : 0;
	const h = typeof any.height === 'number' ? any.height : 0;
	return { width: w, height: h };
}

export interface CaptureOptions {
	width: number;
	height: number;
	mode: FitMode;
	flipH: boolean;
	flipV: boolean;
	quality?: number;
}

/**
 * Draw the current frame of `source` into `canvas` at width x height, framed and flipped.
 * False when the source has no frame yet (the canvas is left as it was).
 */
export function drawFrame(source: CanvasImageSource, canvas: HTMLCanvasElement, o: CaptureOptions): boolean {
	const { width: srcW, height: srcH } = sourceSize(source);
	if (!srcW || !srcH) return false;
	if (canvas.width !== o.width) canvas.width = o.width;
	if (canvas.height !== o.height) canvas.height = o.height;
	const ctx = canvas.getContext('2d', { alpha: false });
	if (!ctx) return false;
	const r = computeDrawRect(srcW, srcH, o.width, o.height, o.mode);
	ctx.setTransform(1, 0, 0, 1, 0, 0);
	if (o.mode === 'contain') {
		ctx.fillStyle = '#000';
		ctx.fillRect(0, 0, o.width, o.height);
	}
	ctx.setTransform(o.flipH ? -1 : 1, 0, 0, o.flipV ? -1 : 1, o.flipH ? o.width : 0, o.flipV ? o.height : 0);
	ctx.imageSmoothingQuality = 'high';
	ctx.drawImage(source, r.sx, r.sy, r.sw, r.sh, r.dx, r.dy, r.dw, r.dh);
	ctx.setTransform(1, 0, 0, 1, 0, 0);
	return true;
}

/**
 * Draw the current frame of `source` into `canvas` at width x height and encode one JPEG.
 * Resolves to null when the source has no frame yet.
 */
export async function captureJpeg(
	source: CanvasImageSource,
	canvas: HTMLCanvasElement,
	o: CaptureOptions
): Promise<Blob | null> {
	if (!drawFrame(source, canvas, o)) return null;
	return new Promise((resolve) => canvas.toBlob((b) => resolve(b), 'image/jpeg', o.quality ?? 0.85));
}
