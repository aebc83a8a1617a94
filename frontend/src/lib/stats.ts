/**
 * Frames per second and latency, measured on the page.
 *
 * fps: output frames shown per second over a sliding window.
 * latency: time from sending an input frame to its output frame being shown (the <img> load).
 * Outputs come back in the order the inputs went out (the protocol keeps one frame in flight), so
 * each arriving output answers the oldest unanswered input. The server asks for the next input at
 * the moment it publishes an output, so input n+1 often leaves just before output n is on screen:
 * matching by order, not by "the latest send", keeps that from reading as a 1 ms latency.
 */
export class FrameStats {
	private shown: number[] = [];
	private sends: number[] = [];
	private latencies: number[] = [];

	constructor(
		private readonly windowMs = 3000,
		private readonly latencySamples = 10,
		private readonly maxInFlight = 4
	) {}

	/** An input frame went out at time `t` (ms). */
	frameSent(t: number): void {
		this.sends.push(t);
		if (this.sends.length > this.maxInFlight) this.sends.shift();
	}

	/** An output frame arrived: the send time of the input it answers, or null. */
	frameArrived(): number | null {
		return this.sends.shift() ?? null;
	}

	/** The server refused a frame or failed on it: no output will answer what is in flight. */
	dropInFlight(): void {
		this.sends = [];
	}

	/** An output frame was shown at time `t` (ms); `sentAt` from frameArrived(). */
	frameShown(t: number, sentAt: number | null = null): void {
		this.shown.push(t);
		this.trim(t);
		if (sentAt !== null && t >= sentAt) {
			this.latencies.push(t - sentAt);
			if (this.latencies.length > this.latencySamples) this.latencies.shift();
		}
	}

	private trim(now: number) {
		while (this.shown.length && now - this.shown[0] > this.windowMs) this.shown.shift();
	}

	/** Output frames per second at time `now`; 0 until two frames were shown. */
	fps(now: number): number {
		this.trim(now);
		const n = this.shown.length;
		if (n < 2) return 0;
		const span = Math.max(now - this.shown[0], this.shown[n - 1] - this.shown[0]);
		return span > 0 ? ((n - 1) * 1000) / span : 0;
	}

	/** Mean latency in ms over the recent frames, null before the first one. */
	latency(): number | null {
		if (!this.latencies.length) return null;
		return this.latencies.reduce((a, b) => a + b, 0) / this.latencies.length;
	}

	reset(): void {
		this.shown = [];
		this.latencies = [];
		this.sends = [];
	}
}
