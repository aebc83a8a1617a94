/**
 * Input sources (camera, screen, file) and the messages shown when one cannot be opened.
 */

export type SourceKind = 'camera' | 'screen' | 'file';

export interface CameraPrefs {
	deviceId: string; // '' = browser default
	facingMode: '' | 'user' | 'environment';
	resolution: string; // '' = default, else "WxH"
}

export const RESOLUTIONS: { value: string; label: string }[] = [
	{ value: '', label: 'Auto resolution' },
	{ value: '640x480', label: '640 × 480 (4:3)' },
	{ value: '1280x720', label: '1280 × 720 (16:9)' },
	{ value: '1920x1080', label: '1920 × 1080 (16:9)' },
	{ value: '1024x1024', label: '1024 × 1024 (1:1)' },
	{ value: '720x1280', label: '720 × 1280 (9:16)' }
];

/** getUserMedia constraints for the camera preferences. */
export function cameraConstraints(p: CameraPrefs): MediaStreamConstraints {
	const video: MediaTrackConstraints = {};
	if (p.deviceId) video.deviceId = { exact: p.deviceId };
	else if (p.facingMode) video.facingMode = { ideal: p.facingMode };
	const m = /^(\d+)x(\d+)$/.exec(p.resolution);
	if (m) {
		video.width = { ideal: Number(m[1]) };
		video.height = { ideal: Number(m[2]) };
	}
	return { video: Object.keys(video).length ? video : true, audio: false };
}

export type MediaProblem = 'insecure' | 'denied' | 'no-camera' | 'busy' | 'overconstrained' | 'unsupported' | 'cancelled' | 'other';

export interface MediaFailure {
	problem: MediaProblem;
	title: string;
	detail: string;
}

/** Explains why the page cannot reach cameras on this origin. */
export function insecureOriginMessage(loc: { protocol: string; host: string; hostname: string }): MediaFailure {
	return {
		problem: 'insecure',
		title: 'Camera blocked: this page is not on a secure origin',
		detail:
			`Browsers only give cameras and screen capture to pages served over HTTPS or from localhost, and this page is ${loc.protocol}//${loc.host}. ` +
			'Start the server with --self-signed to serve HTTPS with a generated development certificate ' +
			'(or with --ssl-certfile and --ssl-keyfile for your own certificate), then open ' +
			`https://${loc.host}/ and accept the certificate warning. A video or image file works without HTTPS.`
	};
}

/** True when getUserMedia cannot work here because of the origin. */
export function isInsecureOrigin(w: { isSecureContext?: boolean; navigator: Navigator }): boolean {
	return w.isSecureContext === false || !w.navigator.mediaDevices;
}

/** Turn a getUserMedia / getDisplayMedia rejection into a message for people. */
export function describeMediaError(err: unknown, kind: SourceKind): MediaFailure {
	const name = (err as { name?: string } | null)?.name ?? '';
	const msg = (err as { message?: string } | null)?.message ?? String(err);
	const what = kind === 'screen' ? 'Screen sharing' : 'Camera';
	switch (name) {
		case 'NotAllowedError':
		case 'PermissionDeniedError':
		case 'SecurityError':
			if (kind === 'screen') {
				return { problem: 'cancelled', title: 'Screen sharing was cancelled or blocked', detail: 'Choose a screen, window or tab to share, or allow screen capture for this site.' };
			}
			return {
				problem: 'denied',
				title: 'Camera permission denied',
				detail: 'Allow camera access for this site (the camera icon in the address bar, or the browser\'s site settings), then press Start again. Or use a video or image file.'
			};
		case 'NotFoundError':
		case 'DevicesNotFoundError':
			return {
				problem: 'no-camera',
				title: kind === 'screen' ? 'Nothing to share' : 'No camera found',
				detail: kind === 'screen' ? msg : 'Connect a camera and press Rescan, or use screen sharing or a video or image file.'
			};
		case 'NotReadableError':
		case 'TrackStartError':
		case 'AbortError':
			return {
				problem: 'busy',
				title: `${what} could not be started`,
				detail: 'Another application may be using it. Close it and try again, or pick another camera.'
			};
		case 'OverconstrainedError':
		case 'ConstraintNotSatisfiedError':
			return {
				problem: 'overconstrained',
				title: 'That camera or resolution is not available',
				detail: 'Pick another camera or set the resolution to Default.'
			};
		case 'TypeError':
			return { problem: 'unsupported', title: `${what} is not supported here`, detail: msg };
		default:
			return { problem: 'other', title: `${what} failed`, detail: msg || name || 'Unknown error' };
	}
}

/** Stop every track of a stream; returns how many were stopped. */
export function stopStream(stream: MediaStream | null | undefined): number {
	if (!stream) return 0;
	const tracks = stream.getTracks();
	for (const t of tracks) t.stop();
	return tracks.length;
}

/** Video inputs; labels are empty until the user granted camera access once. */
export async function listCameras(): Promise<{ deviceId: string; label: string }[]> {
	if (!navigator.mediaDevices?.enumerateDevices) return [];
	try {
		const devices = await navigator.mediaDevices.enumerateDevices();
		return devices
			.filter((d) => d.kind === 'videoinput')
			.map((d, i) => ({ deviceId: d.deviceId, label: d.label || `Camera ${i + 1}` }));
	} catch {
		return [];
	}
}
