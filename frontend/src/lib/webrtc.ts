/**
 * The WebRTC transport of a live session (docs/protocol.md, "WebRTC"): one RTCPeerConnection that
 * sends the input as a video track and receives the output on the same transceiver (sendrecv), and
 * a data channel for the parameters: all of them when it opens, then each change. The server's
 * answers on it are `{"status": "error"|"info", "message": …}`.
 *
 * The offer goes to `POST /api/webrtc/{user_id}` with the stream token of the websocket's
 * "connected". The server takes no trickled candidates: the offer waits until the page's own are
 * gathered. The link reports a failure once (refused offer, no connection, no output) and is then
 * closed; the session falls back to MJPEG.
 */
import { serverDetail } from './notices';
import type { ParamValues } from './schema';

/** Until the connection is up: the offer, the server's answer and ICE. */
const CONNECT_TIMEOUT_MS = 10_000;
/** From the connection up to the first output frame (the server generates it from the first input). */
const FIRST_FRAME_TIMEOUT_MS = 10_000;
/** Host candidates take milliseconds, STUN and TURN ones longer; a server that does not answer must not hold the offer. */
const GATHER_TIMEOUT_MS = 3_000;

export interface WebRtcLinkOptions {
	userId: string;
	streamToken: string;
	/** STUN and TURN servers (/api/settings); none: host candidates only (loopback, LAN). */
	iceServers: RTCIceServer[];
	/** The input, as a video track (the link does not stop it). */
	track: MediaStreamTrack;
	/** All parameter values: sent when the data channel opens. */
	params: () => ParamValues;
	/** The output arrived: a stream for a <video>. */
	onOutput(stream: MediaStream): void;
	/** A message of the server's on the data channel. */
	onServerMessage(level: 'error' | 'info', message: string): void;
	/** WebRTC did not work, and why; the link is closed. */
	onFailed(reason: string): void;
}

/** What a session needs of its link (a fake in the tests). */
export interface WebRtcLinkLike {
	start(): void;
	/** Sends the values unless they are the ones sent last; nothing before the channel opens. */
	sendParams(values: ParamValues): void;
	/** The input switched (camera, screen, file): the server starts the stream afresh. */
	sendNewSource(): void;
	close(): void;
}

export class WebRtcLink implements WebRtcLinkLike {
	#o: WebRtcLinkOptions;
	#pc: RTCPeerConnection | null = null;
	#channel: RTCDataChannel | null = null;
	#lastSentJson = '';
	#timer: ReturnType<typeof setTimeout> | undefined;
	#outputArrived = false;
	#closed = false;

	constructor(options: WebRtcLinkOptions) {
		this.#o = options;
	}

	start(): void {
		const pc = new RTCPeerConnection({ iceServers: this.#o.iceServers });
		this.#pc = pc;
		pc.addTransceiver(this.#o.track, { direction: 'sendrecv' });
		const channel = pc.createDataChannel('params');
		this.#channel = channel;
		channel.onopen = () => this.sendParams(this.#o.params());
		channel.onmessage = (ev) => this.#onMessage(ev.data);
		pc.ontrack = (ev) => {
			// A remote track starts muted and unmutes with its first frame.
			ev.track.onunmute = () => {
				this.#outputArrived = true;
				clearTimeout(this.#timer);
			};
			this.#o.onOutput(new MediaStream([ev.track]));
		};
		pc.onconnectionstatechange = () => {
			if (pc.connectionState === 'connected' && !this.#outputArrived) {
				this.#failAfter(FIRST_FRAME_TIMEOUT_MS, `no output frame came within ${FIRST_FRAME_TIMEOUT_MS / 1000} s of connecting`);
			} else if (pc.connectionState === 'failed') {
				this.#fail('the connection failed (ICE found no network path to the server: a TURN server in its --ice-servers may help)');
			}
		};
		this.#failAfter(CONNECT_TIMEOUT_MS, `no connection within ${CONNECT_TIMEOUT_MS / 1000} s`);
		void this.#negotiate(pc);
	}

	sendParams(values: ParamValues): void {
		const json = JSON.stringify(values);
		if (this.#channel?.readyState !== 'open' || json === this.#lastSentJson) return;
		this.#channel.send(json);
		this.#lastSentJson = json;
	}

	sendNewSource(): void {
		if (this.#channel?.readyState === 'open') this.#channel.send(JSON.stringify({ status: 'new_source' }));
	}

	close(): void {
		if (this.#closed) return;
		this.#closed = true;
		clearTimeout(this.#timer);
		const pc = this.#pc;
		if (pc) {
			pc.ontrack = null;
			pc.onconnectionstatechange = null;
			pc.close();
		}
		this.#pc = null;
		this.#channel = null;
	}

	async #negotiate(pc: RTCPeerConnection): Promise<void> {
		let response: Response;
		try {
			await pc.setLocalDescription(await pc.createOffer());
			await gathered(pc, GATHER_TIMEOUT_MS);
			if (this.#closed) return;
			response = await fetch(`/api/webrtc/${encodeURIComponent(this.#o.userId)}`, {
				method: 'POST',
				headers: { 'Content-Type': 'application/json' },
				body: JSON.stringify({ sdp: pc.localDescription?.sdp, type: 'offer', stream_token: this.#o.streamToken })
			});
		} catch (e) {
			this.#fail(`the offer could not be sent (${String(e)})`);
			return;
		}
		if (this.#closed) return;
		const body: unknown = await response.json().catch(() => null);
		if (!response.ok) {
			// FastAPI says why in {"detail": …}: 400 a bad offer, 403 a wrong token, 404 no session.
			const said = serverDetail(body);
			this.#fail(`the server refused the offer: ${said ? `${said} ` : ''}(HTTP ${response.status})`);
			return;
		}
		const answer = body as RTCSessionDescriptionInit | null;
		if (answer?.type !== 'answer' || typeof answer.sdp !== 'string') {
			this.#fail('the server answered the offer without an SDP answer');
			return;
		}
		try {
			await pc.setRemoteDescription(answer);
		} catch (e) {
			if (!this.#closed) this.#fail(`the server's answer was not usable (${String(e)})`);
		}
	}

	#onMessage(data: unknown): void {
		if (typeof data !== 'string') return;
		let msg: { status?: unknown; message?: unknown };
		try {
			msg = JSON.parse(data);
		} catch {
			return;
		}
		if ((msg?.status === 'error' || msg?.status === 'info') && typeof msg.message === 'string') {
			this.#o.onServerMessage(msg.status, msg.message);
		}
	}

	#failAfter(ms: number, reason: string): void {
		clearTimeout(this.#timer);
		this.#timer = setTimeout(() => this.#fail(reason), ms);
	}

	#fail(reason: string): void {
		if (this.#closed) return;
		this.close();
		this.#o.onFailed(reason);
	}
}

/** Resolves once ICE gathering is complete, or after `maxMs` (the offer then has the candidates so far). */
function gathered(pc: RTCPeerConnection, maxMs: number): Promise<void> {
	return new Promise((resolve) => {
		if (pc.iceGatheringState === 'complete') return resolve();
		const timer = setTimeout(done, maxMs);
		pc.addEventListener('icegatheringstatechange', onChange);
		function onChange() {
			if (pc.iceGatheringState === 'complete') done();
		}
		function done() {
			clearTimeout(timer);
			pc.removeEventListener('icegatheringstatechange', onChange);
			resolve();
		}
	});
}
