/**
 * How a session's pictures travel. Both keep the websocket (docs/protocol.md): it opens the session
 * and says when it ends.
 * - "webrtc": the input goes up as a video track and the output comes down as one, the parameters
 *   over a data channel (webrtc.ts). Preferred: far less traffic than a JPEG a frame each way.
 * - "mjpeg": JPEG frames over the websocket, the output as an MJPEG stream (`/api/stream`).
 */

export type Transport = 'webrtc' | 'mjpeg';

export const TRANSPORT_LABELS: Record<Transport, string> = { webrtc: 'WebRTC', mjpeg: 'MJPEG' };

/** `?transport=webrtc` or `?transport=mjpeg` in the page's URL; null when it names neither. */
export function forcedTransport(search: string): Transport | null {
	const value = new URLSearchParams(search).get('transport')?.toLowerCase();
	return value === 'webrtc' || value === 'mjpeg' ? value : null;
}

export interface TransportChoice {
	transport: Transport;
	/** Why MJPEG rather than WebRTC ('' when WebRTC was chosen, or forced MJPEG). */
	reason: string;
	/** The URL asked for WebRTC and it cannot be had: the page says so. */
	forcedAway: boolean;
}

/**
 * The transport of a new session: WebRTC when the server offers it (`transports` of /api/settings),
 * the browser has it and the pipeline can use it; `?transport=` overrides the server's list.
 */
export function chooseTransport(o: {
	/** `transports` of /api/settings; missing from servers that only have MJPEG. */
	offered: readonly string[] | undefined;
	forced: Transport | null;
	/** The browser has RTCPeerConnection. */
	browserHasWebRtc: boolean;
	inputMode: 'image' | 'text';
}): TransportChoice {
	const mjpeg = (reason: string): TransportChoice => ({ transport: 'mjpeg', reason, forcedAway: o.forced === 'webrtc' });
	if (o.forced === 'mjpeg') return { transport: 'mjpeg', reason: '', forcedAway: false };
	if (!o.browserHasWebRtc) return mjpeg('this browser has no WebRTC');
	// A text pipeline has no camera to send; the server generates its frames on the websocket's turns.
	if (o.inputMode === 'text') return mjpeg('a text pipeline has no camera to send');
	if (o.forced === 'webrtc') return { transport: 'webrtc', reason: '', forcedAway: false };
	if (!o.offered?.includes('webrtc')) return mjpeg('the server does not offer WebRTC');
	return { transport: 'webrtc', reason: '', forcedAway: false };
}
