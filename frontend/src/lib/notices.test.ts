import { describe, expect, it } from 'vitest';
import { serverDetail, sessionEndedNotice, streamRefusedNotice, timeoutNotice } from './notices';

describe('timeoutNotice', () => {
	it("shows the server's message once, as the title", () => {
		const n = timeoutNotice('Session timed out: no frame or parameters for 10 s');
		expect(n.title).toBe('Session timed out: no frame or parameters for 10 s');
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

describe('streamRefusedNotice', () => {
	it("shows the server's reason and the status", () => {
		expect(streamRefusedNotice(429, { detail: 'This session has 4 streams open already.' })).toEqual({
			title: 'The output stream could not be opened',
			detail: 'This session has 4 streams open already (HTTP 429).'
		});
	});

	it('falls back to the status when the body says nothing usable', () => {
		expect(streamRefusedNotice(502, null).detail).toBe('The server answered HTTP 502.');
		expect(streamRefusedNotice(404, { detail: [{ msg: 'x' }] }).detail).toBe('The server answered HTTP 404.');
		expect(streamRefusedNotice(500, 'Internal Server Error').detail).toBe('The server answered HTTP 500.');
	});
});

describe('serverDetail', () => {
	it("reads FastAPI's detail string, without its final period", () => {
		expect(serverDetail({ detail: 'This session has 8 viewers; the limit is 8.' })).toBe('This session has 8 viewers; the limit is 8');
		expect(serverDetail({ detail: [{ msg: 'x' }] })).toBe('');
		expect(serverDetail('text')).toBe('');
		expect(serverDetail(null)).toBe('');
	});
});

describe('sessionEndedNotice', () => {
	const server = { host: '192.168.1.20:7860', maxUsers: 4 };

	it('says nothing when the user stopped', () => {
		expect(sessionEndedNotice('stopped', '', server)).toBeNull();
	});

	it('names the host when the server cannot be reached', () => {
		const n = sessionEndedNotice('unreachable', 'No answer from the server within 5 s', server);
		expect(n?.key).toBe('unreachable');
		expect(n?.detail).toMatch(/^No answer from the server within 5 s\. .*running at 192\.168\.1\.20:7860/);
		expect(sessionEndedNotice('unreachable', '', server)?.detail).toMatch(/^Cannot connect to the server\./);
	});

	it('counts the places of a full server', () => {
		expect(sessionEndedNotice('full', 'Server is full', server)?.detail).toMatch(/^All 4 places/);
		expect(sessionEndedNotice('full', 'Server is full', { ...server, maxUsers: 1 })?.detail).toMatch(/one user at a time/);
		expect(sessionEndedNotice('full', 'Server is full', { ...server, maxUsers: 0 })?.detail).toMatch(/^All places/);
	});

	it("shows the server's timeout message as the title", () => {
		expect(sessionEndedNotice('timeout', 'Session timed out: no frame or parameters for 10 s', server)).toMatchObject({
			key: 'timeout',
			level: 'info',
			title: 'Session timed out: no frame or parameters for 10 s'
		});
	});

	it('keys a server error and a lost connection for the status bar', () => {
		expect(sessionEndedNotice('error', 'boom', server)).toMatchObject({ key: 'server-error', level: 'error', detail: 'boom' });
		expect(sessionEndedNotice('lost', 'Connection to the server was lost', server)?.detail).toBe(
			'Connection to the server was lost. Press Start to reconnect.'
		);
	});
});
