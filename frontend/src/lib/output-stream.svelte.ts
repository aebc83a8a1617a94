// The session's output, shown with the frame rate (and, over MJPEG, the latency) measured where the
// frames are shown. Each frame also goes to the pop-out window, if one is open.
// - MJPEG: `GET /api/stream/{user_id}` read with fetch() and shown frame by frame in an <img>.
// - WebRTC: the output track in a <video> (`video`), its frames counted as the video shows them
//   (requestVideoFrameCallback). The page has no JPEG of them: the snapshot and the pop-out get the
//   shown frame encoded here.
import { FrameDisplay } from './frame-display.svelte';
import { readMultipart } from './mjpeg';
import type { NoticeBoard } from './notice-board.svelte';
import { streamRefusedNotice } from './notices';
import { FrameStats } from './stats';

/** Where else the frames go (the pop-out window). */
export interface FrameMirror {
	/** Someone is watching: over WebRTC each frame is encoded as a JPEG only then. */
	readonly isOpen: boolean;
	frame(jpeg: Uint8Array): void;
	/** Nothing to show any more, and why ("Stopped"). */
	clear(reason: string): void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class OutputStream {
	/** Tagged with the send time of the input each frame answers (latency). */
	readonly frames = new FrameDisplay<number | null>();
	/** A frame is on screen. */
	hasFrame = $state(false);
	/** The stream ended while the session is still on (the pane offers to show it again). */
	streamEnded = $state(false);
	fps = $state(0);
	latency = $state<number | null>(null);
	framesShown = $state(0);
	/** The bytes of the newest MJPEG frame, as the server sent them (snapshots). */
	lastJpeg: Uint8Array | null = null;
	/** The WebRTC output, for the pane's <video>; null over MJPEG. */
	video = $state.raw<MediaStream | null>(null);
	#videoElement: HTMLVideoElement | null = null;
	#jpegCanvas: HTMLCanvasElement | null = null;
	/** A frame is being encoded for the pop-out: newer ones are not queued behind it. */
	#mirroring = false;
	#stats = new FrameStats();
	#reading: AbortController | null = null;
	#notices: NoticeBoard;
	#mirror: FrameMirror;
	#isLive: (userId: string) => boolean;

	/** `isLive(userId)`: whether that session is still on. */
	constructor(o: { notices: NoticeBoard; mirror: FrameMirror; isLive: (userId: string) => boolean }) {
		this.#notices = o.notices;
		this.#mirror = o.mirror;
		this.#isLive = o.isLive;
	}

	/** A new session: nothing measured yet. */
	reset(): void {
		this.#stats.reset();
		this.fps = 0;
		this.latency = null;
		this.framesShown = 0;
	}

	/** An input went out at `at` (performance.now()); the next frame shown answers it. */
	inputSent(at: number): void {
		this.#stats.frameSent(at);
	}

	/** The server reported an error: the inputs in flight get no answer. */
	inputsLost(): void {
		this.#stats.dropInFlight();
	}

	/** Updates fps and latency (twice a second while live). */
	measure(): void {
		this.fps = this.#stats.fps(performance.now());
		this.latency = this.#stats.latency();
	}

	/** Reads the session's stream until it ends or `close()`; retries a refused or failed opening.
	 * `streamToken` (from the server's "connected") lets it in however many others hold the session's
	 * streams. */
	async open(userId: string, streamToken = ''): Promise<void> {
		this.close();
		const ac = new AbortController();
		this.#reading = ac;
		for (let attempt = 0; !ac.signal.aborted; attempt++) {
			let res: Response;
			try {
				const query = streamToken ? `?stream_token=${encodeURIComponent(streamToken)}` : '';
				res = await fetch(`/api/stream/${encodeURIComponent(userId)}${query}`, { signal: ac.signal, cache: 'no-store' });
			} catch {
				if (ac.signal.aborted) return;
				if (attempt >= 3) return;
				await sleep(500);
				continue;
			}
			if (!res.ok) {
				// FastAPI says why in {"detail": …}: 404 (the session is gone), 429 (it has its four
				// streams open already: other tabs, OBS sources).
				const body: unknown = await res.json().catch(() => null);
				if (attempt >= 3) {
					if (!ac.signal.aborted) {
						this.#notices.show({
							key: 'stream',
							level: 'error',
							...streamRefusedNotice(res.status, body),
							action: { label: 'Show it here again', run: () => void (this.#isLive(userId) && this.open(userId, streamToken)) }
						});
					}
					return;
				}
				await sleep(300 * (attempt + 1));
				continue;
			}
			this.#notices.dismiss('stream');
			const end = await readMultipart(res, (jpeg) => this.#arrived(jpeg), ac.signal);
			if (ac.signal.aborted || end === 'aborted') return;
			// The stream ended. When the session ended, the websocket says so as well (the session's
			// end closes this reader and says why): give that a moment. If the session is still on,
			// the stream broke on its own (a proxy, the network): say so, and offer to open it again.
			await sleep(1000);
			if (ac.signal.aborted || !this.#isLive(userId)) return;
			this.streamEnded = true;
			return;
		}
	}

	/** Shows the WebRTC output (in place of any MJPEG stream). */
	showVideo(stream: MediaStream): void {
		this.close();
		this.video = stream;
	}

	/**
	 * Plays the WebRTC output in the pane's <video> until the returned cleanup (a Svelte attachment):
	 * each new frame counts as shown, and goes to the pop-out window while one is open.
	 */
	attachVideo(element: HTMLVideoElement, stream: MediaStream): () => void {
		this.#videoElement = element;
		element.srcObject = stream;
		void element.play().catch(() => {}); // muted: autoplay is allowed
		let handle = 0;
		const onFrame = () => {
			this.#videoFrameShown(element);
			handle = element.requestVideoFrameCallback(onFrame);
		};
		handle = element.requestVideoFrameCallback(onFrame);
		return () => {
			element.cancelVideoFrameCallback(handle);
			element.srcObject = null;
			if (this.#videoElement === element) this.#videoElement = null;
		};
	}

	/** The frame on screen as a JPEG (snapshots): over MJPEG the server's bytes, over WebRTC the video frame encoded here. */
	async currentJpeg(): Promise<Uint8Array | null> {
		if (this.#videoElement) return this.#videoJpeg(this.#videoElement);
		return this.lastJpeg;
	}

	/** The <img> loaded (`ok`) or failed to decode the frame it was given. */
	shown(ok: boolean): void {
		const now = performance.now();
		const sentAt = this.frames.loaded();
		if (ok) {
			this.#stats.frameShown(now, sentAt ?? null);
			this.framesShown++;
			this.hasFrame = true;
		}
	}

	/** Stops reading and clears the pane; with a reason, the pop-out window says it. */
	close(reason?: string): void {
		this.#reading?.abort();
		this.#reading = null;
		this.frames.clear();
		this.lastJpeg = null;
		this.video = null;
		this.hasFrame = false;
		this.streamEnded = false;
		this.#notices.dismiss('stream');
		if (reason !== undefined) this.#mirror.clear(reason);
	}

	/** The session is over: the pane and the pop-out clear, the figures go blank. */
	sessionEnded(): void {
		this.close('Stopped');
		this.fps = 0;
		this.latency = null;
	}

	#videoFrameShown(element: HTMLVideoElement): void {
		this.#stats.frameShown(performance.now());
		this.framesShown++;
		this.hasFrame = true;
		if (this.#mirror.isOpen && !this.#mirroring) {
			this.#mirroring = true;
			void this.#videoJpeg(element)
				.then((jpeg) => {
					if (jpeg && this.video) this.#mirror.frame(jpeg);
				})
				.finally(() => (this.#mirroring = false));
		}
	}

	async #videoJpeg(element: HTMLVideoElement): Promise<Uint8Array | null> {
		const { videoWidth: width, videoHeight: height } = element;
		if (!width || !height) return null;
		const canvas = (this.#jpegCanvas ??= document.createElement('canvas'));
		canvas.width = width;
		canvas.height = height;
		canvas.getContext('2d')?.drawImage(element, 0, 0, width, height);
		const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.92));
		return blob ? new Uint8Array(await blob.arrayBuffer()) : null;
	}

	#arrived(jpeg: Uint8Array): void {
		this.lastJpeg = jpeg;
		const sentAt = this.#stats.frameArrived();
		this.#mirror.frame(jpeg);
		this.frames.show(jpeg, sentAt);
	}
}
