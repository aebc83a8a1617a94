/** What the page tells the user (the banner under the top bar), and the wording of each notice. */
import type { SourceKind } from './media';
import type { EndReason } from './protocol';

export interface Notice {
	/** What it is about, so a later event can clear just this one (and tests can find it). */
	key: string;
	level: 'error' | 'warning' | 'info';
	title: string;
	detail?: string;
	action?: { label: string; run: () => void };
	autoHideMs?: number;
}

/** FastAPI's reason in `{"detail": "…"}`, without its final period; '' when there is none. */
export function serverDetail(body: unknown): string {
	const d = body && typeof body === 'object' ? (body as { detail?: unknown }).detail : undefined;
	return typeof d === 'string' ? d.trim().replace(/[.\s]+$/, '') : '';
}

/**
 * The notice of a session the server ended for time (`{"status":"timeout","message":…}`). The
 * server's message says it all ("Session timed out: no frame or parameters for 10 s", "Session
 * ended: the limit is 600 s a session"): it becomes the title, said once. A message that does not
 * name the session gets a title that does.
 */
export function timeoutNotice(message: string): { title: string; detail: string } {
	const m = message.trim().replace(/[.\s]+$/, '');
	const again = 'Press Start to begin a new session.';
	if (!m) return { title: 'Session timed out', detail: again };
	if (/^session\b/i.test(m)) return { title: m, detail: again };
	return { title: 'Session timed out', detail: `${m}. ${again}` };
}

/**
 * The notice of an output stream the server refused (`GET /api/stream/{id}` answered an error, such
 * as 429 when a session already has its four streams open). FastAPI's `{"detail": …}` says why; it
 * is shown as it is, else the status.
 */
export function streamRefusedNotice(status: number, body: unknown): { title: string; detail: string } {
	const said = serverDetail(body);
	return {
		title: 'The output stream could not be opened',
		detail: said ? `${said} (HTTP ${status}).` : `The server answered HTTP ${status}.`
	};
}

/** The server cannot be reached (settings not loaded, socket not opened); `host` is the page's. */
export function unreachableNotice(detail: string, host: string): Notice {
	return {
		key: 'unreachable',
		level: 'error',
		title: 'Server unreachable',
		detail: `${detail}. Check that the Live Diffusion server is running at ${host} and reachable from this device, then press Start again.`
	};
}

/** Why a session ended, said once it has; null when the user stopped it. */
export function sessionEndedNotice(reason: EndReason, message: string, server: { host: string; maxUsers: number }): Notice | null {
	switch (reason) {
		case 'stopped':
			return null;
		case 'unreachable':
			return unreachableNotice(message || 'Cannot connect to the server', server.host);
		case 'full': {
			const max = server.maxUsers;
			return {
				key: 'full',
				level: 'warning',
				title: 'Server is full',
				detail:
					max === 1
						? 'This server takes one user at a time and someone else is using it. Try again in a moment.'
						: `All ${max > 0 ? max + ' ' : ''}places on this server are taken. Try again in a moment.`
			};
		}
		case 'timeout':
			return { key: 'timeout', level: 'info', ...timeoutNotice(message) };
		case 'error':
			return { key: 'server-error', level: 'error', title: 'The server ended the session', detail: message };
		case 'lost':
			return { key: 'lost', level: 'error', title: 'Connection lost', detail: `${message}. Press Start to reconnect.` };
	}
}

/** The input source ended without us stopping it: "Stop sharing" in the browser bar, or an unplugged camera. */
export function sourceEndedNotice(kind: SourceKind): Notice {
	const screen = kind === 'screen';
	return {
		key: 'source-ended',
		level: screen ? 'info' : 'warning',
		title: screen ? 'Screen sharing ended' : 'The camera stopped',
		detail: screen ? 'Press Start to share again.' : 'It may have been unplugged or taken by another application.'
	};
}
