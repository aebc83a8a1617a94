// The input of image pipelines: a camera, a shared screen, or a video or image file, with the
// framing and flips applied to the frames sent (one JPEG at a time over MJPEG, a video track over
// WebRTC). The camera choice, flips and framing are stored.
// The <video> and <img> are the input panel's; it binds them here.
import { tick } from 'svelte';
import { captureJpeg, drawFrame, type FitMode } from './capture';
import {
	RESOLUTIONS,
	cameraConstraints,
	describeMediaError,
	insecureOriginMessage,
	isInsecureOrigin,
	listCameras,
	stopStream,
	type CameraPrefs,
	type SourceKind
} from './media';
import type { NoticeBoard } from './notice-board.svelte';
import { load, save } from './storage';

/** Turns false once the start or session that asked for the source is over (see LiveSession.guard). */
type StillWanted = () => boolean;

/** How often the WebRTC track gets a new picture: a camera's rate. */
const TRACK_FPS = 30;

interface StoredPrefs {
	cam?: Partial<CameraPrefs>;
	flipH?: boolean;
	flipV?: boolean;
	fit?: FitMode;
}

function fileType(f: File): 'video' | 'image' | null {
	if (f.type.startsWith('image/')) return 'image';
	if (f.type.startsWith('video/') || /\.(mp4|webm|mov|mkv|ogv|m4v)$/i.test(f.name)) return 'video';
	if (/\.(png|jpe?g|gif|webp|bmp|avif)$/i.test(f.name)) return 'image';
	return null;
}

export class InputSource {
	kind = $state<SourceKind>('camera');
	/** Changes whenever another camera, screen or file is opened: the server starts its stream memory afresh. */
	sourceId = $state(0);
	cam = $state<CameraPrefs>({ deviceId: '', facingMode: '', resolution: '' });
	flipH = $state(false);
	flipV = $state(false);
	fit = $state<FitMode>('cover');
	cameras = $state<{ deviceId: string; label: string }[]>([]);
	/** The camera or screen being captured. */
	stream = $state.raw<MediaStream | null>(null);
	file = $state.raw<{ name: string; url: string; type: 'video' | 'image' } | null>(null);
	/** Size of the source picture, once known. */
	dims = $state<{ w: number; h: number } | null>(null);
	/** The camera's or screen's name, or the file's. */
	label = $state('');
	video = $state<HTMLVideoElement>();
	image = $state<HTMLImageElement>();
	/** Every track ever opened (the end-to-end tests check that all of them ended). */
	readonly openedTracks: MediaStreamTrack[] = [];
	#canvas: HTMLCanvasElement | null = null;
	/** The WebRTC track being fed, and the timer that draws into its canvas. */
	#feed: { track: MediaStreamTrack; timer: ReturnType<typeof setInterval> } | null = null;
	#notices: NoticeBoard;
	#onEnded: (kind: SourceKind) => void;

	/** `onEnded`: the camera or screen ended by itself (unplugged, "Stop sharing" in the browser). */
	constructor(o: { notices: NoticeBoard; onEnded: (kind: SourceKind) => void }) {
		this.#notices = o.notices;
		this.#onEnded = o.onEnded;
		const stored = load<StoredPrefs>('source');
		if (stored) {
			this.cam = {
				deviceId: typeof stored.cam?.deviceId === 'string' ? stored.cam.deviceId : '',
				facingMode: stored.cam?.facingMode === 'user' || stored.cam?.facingMode === 'environment' ? stored.cam.facingMode : '',
				resolution: RESOLUTIONS.some((r) => r.value === stored.cam?.resolution) ? (stored.cam?.resolution ?? '') : ''
			};
			this.flipH = stored.flipH === true;
			this.flipV = stored.flipV === true;
			this.fit = stored.fit === 'contain' ? 'contain' : 'cover';
		}
	}

	/** Stores the camera choice, flips and framing. Run in an effect: it runs again on each change. */
	savePrefs(): void {
		save('source', { cam: $state.snapshot(this.cam), flipH: this.flipH, flipV: this.flipV, fit: this.fit });
	}

	/** Keeps the camera list current while cameras come and go; returns the unsubscribe. */
	watchCameras(): () => void {
		void this.rescanCameras();
		const changed = () => void this.rescanCameras();
		navigator.mediaDevices?.addEventListener?.('devicechange', changed);
		return () => navigator.mediaDevices?.removeEventListener?.('devicechange', changed);
	}

	async rescanCameras(): Promise<void> {
		this.cameras = await listCameras();
	}

	/** Whether there is something to send: a chosen file, or a live camera or screen. */
	hasSource(): boolean {
		if (this.kind === 'file') return !!this.file;
		return !!this.stream && this.stream.getVideoTracks().some((t) => t.readyState === 'live');
	}

	/** Before a session: opens the camera or screen unless a source is there already. */
	async ready(stillWanted: StillWanted): Promise<boolean> {
		if (this.hasSource()) {
			if (this.kind === 'file' && this.file?.type === 'video' && this.video) void this.video.play().catch(() => {});
			return true;
		}
		if (this.kind === 'camera') return this.openCamera(stillWanted);
		if (this.kind === 'screen') return this.openScreen(stillWanted);
		this.#notices.show({ key: 'file', level: 'info', title: 'Choose a file', detail: 'Pick a video or image file as the input, or switch to the camera.' });
		return false;
	}

	/**
	 * Switches to a camera or the screen (a file is chosen with `openFile`). During a session it
	 * opens the new source at once; otherwise Start opens it.
	 */
	async choose(kind: 'camera' | 'screen', running: boolean, stillWanted: StillWanted): Promise<void> {
		if (kind === this.kind && this.hasSource()) return;
		if (!running) {
			if (this.kind === 'file') this.closeFile();
			this.release();
			this.kind = kind;
			return;
		}
		const ok = kind === 'camera' ? await this.openCamera(stillWanted) : await this.openScreen(stillWanted);
		if (ok && this.file) this.closeFile();
	}

	/** The camera choice or resolution changed: reopen it when it is in use. */
	async cameraChanged(stillWanted: StillWanted): Promise<void> {
		if (this.kind === 'camera' && this.stream) await this.openCamera(stillWanted);
	}

	async switchFacing(stillWanted: StillWanted): Promise<void> {
		this.cam.facingMode = this.cam.facingMode === 'environment' ? 'user' : 'environment';
		this.cam.deviceId = '';
		await this.cameraChanged(stillWanted);
	}

	async openCamera(stillWanted: StillWanted): Promise<boolean> {
		if (isInsecureOrigin(window)) {
			this.#notices.show({ key: 'insecure', level: 'error', ...insecureOriginMessage(location) });
			return false;
		}
		this.release();
		let s: MediaStream;
		try {
			try {
				s = await navigator.mediaDevices.getUserMedia(cameraConstraints(this.cam));
			} catch (e) {
				// A remembered camera that is gone: fall back to the default one.
				const name = (e as { name?: string }).name;
				if (this.cam.deviceId && (name === 'OverconstrainedError' || name === 'NotFoundError')) {
					this.cam.deviceId = '';
					s = await navigator.mediaDevices.getUserMedia(cameraConstraints(this.cam));
				} else throw e;
			}
		} catch (e) {
			if (!stillWanted()) return false;
			const f = describeMediaError(e, 'camera');
			this.#notices.show({ key: f.problem, level: 'error', title: f.title, detail: f.detail });
			return false;
		}
		this.#track(s);
		if (!stillWanted()) {
			// Stopped while the permission prompt was up.
			stopStream(s);
			return false;
		}
		this.kind = 'camera';
		await this.#attach(s);
		void this.rescanCameras();
		const id = s.getVideoTracks()[0]?.getSettings?.().deviceId;
		if (id && this.cam.deviceId && id !== this.cam.deviceId) this.cam.deviceId = id;
		return true;
	}

	async openScreen(stillWanted: StillWanted): Promise<boolean> {
		if (!navigator.mediaDevices?.getDisplayMedia) {
			if (isInsecureOrigin(window)) this.#notices.show({ key: 'insecure', level: 'error', ...insecureOriginMessage(location) });
			else
				this.#notices.show({
					key: 'no-screen',
					level: 'error',
					title: 'Screen sharing is not supported by this browser',
					detail: 'Use a camera or a video file instead.'
				});
			return false;
		}
		let s: MediaStream;
		try {
			s = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 30 } }, audio: false });
		} catch (e) {
			if (!stillWanted()) return false;
			const f = describeMediaError(e, 'screen');
			this.#notices.show({ key: f.problem, level: f.problem === 'cancelled' ? 'info' : 'error', title: f.title, detail: f.detail });
			return false;
		}
		this.#track(s);
		if (!stillWanted()) {
			stopStream(s);
			return false;
		}
		this.release();
		this.kind = 'screen';
		await this.#attach(s);
		return true;
	}

	async openFile(f: File): Promise<void> {
		const type = fileType(f);
		if (!type) {
			this.#notices.show({ key: 'file', level: 'error', title: 'Unsupported file', detail: `${f.name} is neither a video nor an image.` });
			return;
		}
		this.release();
		this.closeFile();
		this.#notices.dismiss();
		const file = { name: f.name, url: URL.createObjectURL(f), type };
		this.file = file;
		this.sourceId++;
		this.kind = 'file';
		this.label = f.name;
		this.dims = null;
		await tick();
		const video = this.video;
		if (type === 'video' && video) {
			video.srcObject = null;
			video.src = file.url;
			video.loop = true;
			video.muted = true;
			try {
				await video.play();
			} catch {
				/* not playable: the error event explains */
			}
		}
	}

	closeFile(): void {
		if (this.file) URL.revokeObjectURL(this.file.url);
		this.file = null;
		const video = this.video;
		if (video && video.getAttribute('src')) {
			video.pause();
			video.removeAttribute('src');
			video.load();
		}
	}

	/** Stops the camera or screen (its light goes off); a file stays chosen. */
	release(): void {
		const s = this.stream;
		this.stream = null;
		stopStream(s);
		if (this.video && this.video.srcObject) this.video.srcObject = null;
		if (this.kind !== 'file') {
			this.dims = null;
			this.label = '';
		}
	}

	/** After a session: the camera goes off, a video file pauses. */
	sessionEnded(): void {
		this.stopTrack();
		this.release();
		if (this.kind === 'file' && this.video && this.file?.type === 'video') this.video.pause();
	}

	videoResized(): void {
		if (this.video?.videoWidth) this.dims = { w: this.video.videoWidth, h: this.video.videoHeight };
	}

	imageLoaded(): void {
		if (this.image?.naturalWidth) this.dims = { w: this.image.naturalWidth, h: this.image.naturalHeight };
	}

	/** One JPEG of the current picture at the pipeline's size, framed and flipped as the preview. */
	async grabJpeg(size: { width: number; height: number }): Promise<Blob | null> {
		const el = this.#element();
		if (!el) return null;
		this.#canvas ??= document.createElement('canvas');
		return captureJpeg(el, this.#canvas, {
			width: size.width,
			height: size.height,
			mode: this.fit,
			flipH: this.flipH,
			flipV: this.flipV,
			quality: 0.85
		});
	}

	/**
	 * The input as a video track (WebRTC): whatever the source is now (camera, screen, file; it may
	 * change during the session) drawn into a canvas at the pipeline's size, framed and flipped as
	 * the JPEGs are, so the server gets the same pictures either way. Fed until `stopTrack()`.
	 */
	startTrack(size: () => { width: number; height: number }): MediaStreamTrack | null {
		this.stopTrack();
		const canvas = document.createElement('canvas');
		({ width: canvas.width, height: canvas.height } = size());
		const track = canvas.captureStream(TRACK_FPS).getVideoTracks()[0];
		if (!track) return null;
		// The server wants every pixel: the encoder drops frames rather than resolution.
		track.contentHint = 'detail';
		const draw = () => {
			const el = this.#element();
			if (el) drawFrame(el, canvas, { ...size(), mode: this.fit, flipH: this.flipH, flipV: this.flipV });
		};
		draw();
		this.#feed = { track, timer: setInterval(draw, 1000 / TRACK_FPS) };
		return track;
	}

	stopTrack(): void {
		if (!this.#feed) return;
		clearInterval(this.#feed.timer);
		this.#feed.track.stop();
		this.#feed = null;
	}

	#element(): CanvasImageSource | null {
		if (this.kind === 'file' && this.file?.type === 'image') return this.image ?? null;
		if (!this.video) return null;
		if (this.kind === 'file' ? !this.file : !this.stream) return null;
		return this.video;
	}

	#track(s: MediaStream): void {
		for (const t of s.getTracks()) {
			this.openedTracks.push(t);
			t.addEventListener('ended', () => this.#trackEnded(s));
		}
	}

	/** A track ended without us stopping it (stopping one ourselves fires no `ended`). */
	#trackEnded(s: MediaStream): void {
		if (this.stream !== s) return;
		this.release();
		this.#onEnded(this.kind);
	}

	async #attach(s: MediaStream): Promise<void> {
		this.stream = s;
		this.sourceId++;
		await tick();
		const video = this.video;
		if (!video) return;
		video.removeAttribute('src');
		video.srcObject = s;
		this.label = s.getVideoTracks()[0]?.label ?? '';
		try {
			await video.play();
		} catch {
			/* autoplay of a muted inline video is allowed; a switch mid-play aborts this one */
		}
	}
}
