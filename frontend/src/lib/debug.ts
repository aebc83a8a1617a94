/** A read-only view of the page's state for the end-to-end tests (window.__liveDiffusion). */
export interface DebugHandle {
	/** readyState of every track the page ever opened ("live" or "ended"). */
	tracks(): { kind: string; label: string; readyState: string }[];
	/** readyState of the current websocket or null (0 connecting, 1 open, 2 closing, 3 closed). */
	socketState(): number | null;
	/** The session's phase: idle, starting, connecting or live. */
	state(): string;
	framesShown(): number;
	/** The user id of the current or last session. */
	userId(): string;
	framesSent(): number;
}
