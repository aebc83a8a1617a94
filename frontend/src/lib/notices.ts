/** Wording of the notices that depend on what the server said. */

/**
 * The notice of a session the server ended for time (`{"status":"timeout","message":…}`). The
 * server's message says it all ("Session timed out: no message for 10 s", "Session ended: the limit
 * is 600 s a session"): it becomes the title, said once. A message that does not name the session
 * gets a title that does.
 */
export function timeoutNotice(message: string): { title: string; detail: string } {
	const m = message.trim().replace(/[.\s]+$/, '');
	const again = 'Press Start to begin a new session.';
	if (!m) return { title: 'Session timed out', detail: again };
	if (/^session\b/i.test(m)) return { title: m, detail: again };
	return { title: 'Session timed out', detail: `${m}. ${again}` };
}
