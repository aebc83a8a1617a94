// Showing a stream of JPEG frames in an <img>, shared by the main page, the pop-out window and the
// viewer page: each frame becomes a blob URL, at most one is decoding at a time (a frame arriving
// meanwhile waits, and only the newest one), and every URL is revoked once it is off screen.

/** Makes and frees object URLs; injected by the tests. */
export interface ObjectUrls {
	create(blob: Blob): string;
	revoke(url: string): void;
}

const browserUrls: ObjectUrls = {
	create: (blob) => URL.createObjectURL(blob),
	revoke: (url) => URL.revokeObjectURL(url)
};

/**
 * The frames of one <img>: `<img src={frames.url} onload={…frames.loaded()} onerror={…}>`, shown
 * only while `url` is set. `T` is what the caller wants back with each frame once it is on screen
 * (the main page: the send time of its input, for latency).
 */
export class FrameDisplay<T = undefined> {
	/** The src of the <img>: the frame decoding, else the one on screen; null when cleared. */
	url = $state<string | null>(null);
	#urls: ObjectUrls;
	/** The URL of the frame on screen (kept until the next one has loaded: no blank in between). */
	#shown: string | null = null;
	#busy = false;
	#tag: T | undefined;
	#pending: { jpeg: Uint8Array; tag: T | undefined } | null = null;

	constructor(urls: ObjectUrls = browserUrls) {
		this.#urls = urls;
	}

	/** A new frame: decoded now, or once the one decoding is done (only the newest waits). */
	show(jpeg: Uint8Array, tag?: T): void {
		if (this.#busy) {
			this.#pending = { jpeg, tag }; // still decoding the previous one: show only the newest
			return;
		}
		this.#busy = true;
		this.#tag = tag;
		this.url = this.#urls.create(new Blob([jpeg as BlobPart], { type: 'image/jpeg' }));
	}

	/** The <img> loaded (or failed) the frame: returns its tag and starts the waiting frame, if any. */
	loaded(): T | undefined {
		const tag = this.#tag;
		if (this.#shown && this.#shown !== this.url) this.#urls.revoke(this.#shown);
		this.#shown = this.url;
		this.#busy = false;
		if (this.#pending) {
			const p = this.#pending;
			this.#pending = null;
			this.show(p.jpeg, p.tag);
		}
		return tag;
	}

	/** Nothing on screen any more: drops the waiting frame and revokes every URL. */
	clear(): void {
		this.#pending = null;
		this.#busy = false;
		if (this.#shown) this.#urls.revoke(this.#shown);
		if (this.url && this.url !== this.#shown) this.#urls.revoke(this.url);
		this.#shown = null;
		this.url = null;
	}
}

/** The pop-out and viewer pages: `idle` turns true after `ms` without a `poke()` (mouse moves); hides the cursor. */
export class IdleCursor {
	idle = $state(false);
	#ms: number;
	#timer: ReturnType<typeof setTimeout> | undefined;

	constructor(ms = 2500) {
		this.#ms = ms;
	}

	poke(): void {
		this.idle = false;
		clearTimeout(this.#timer);
		this.#timer = setTimeout(() => (this.idle = true), this.#ms);
	}

	stop(): void {
		clearTimeout(this.#timer);
	}
}
