import { describe, expect, it } from 'vitest';
import { timeoutNotice } from './notices';

describe('timeoutNotice', () => {
	it("shows the server's message once, as the title", () => {
		const n = timeoutNotice('Session timed out: no message for 10 s');
		expect(n.title).toBe('Session timed out: no message for 10 s');
		expect(n.detail).toBe('Press Start to begin a new session.');
		expect(`${n.title} ${n.detail}`.match(/timed out/gi)).toHaveLength(1);
	});

	it('keeps the session-length message as it is', () => {
		expect(timeoutNotice('Session ended: the limit is 600 s a session.').title).toBe('Session ended: the limit is 600 s a session');
	});

	it('names the session when the message does not', () => {
		expect(timeoutNotice('Idle for 60 s')).toEqual({ title: 'Session timed out', detail: 'Idle for 60 s. Press Start to begin a new session.' });
	});

	it('has a title without a message', () => {
		expect(timeoutNotice('  ')).toEqual({ title: 'Session timed out', detail: 'Press Start to begin a new session.' });
	});
});
