import { afterEach, describe, expect, it, vi } from 'vitest';
import { ViewerLinkError, copyText, fetchViewerLinks, viewStreamUrl, viewerPageUrl, watchViewStream, type ViewerState } from './viewer';

const enc = new TextEncoder();
const loc = { origin: 'http://192.168.1.20:7860', pathname: '/' };
const MJPEG = { 'content-type': 'multipart/x-mixed-replace;boundary=frame' };

function part(body: Uint8Array) {
	const head = enc.encode(`--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ${body.length}\r\n\r\n`);
	const out = new Uint8Array(head.length + body.length + 2);
	out.set(head);
	out.set(body, head.length);
	out.set([13, 10], head.length + body.length);
	return out;
}

/** An MJPEG response with these frames, then closed (or left open). */
function stream(frames: Uint8Array[], { close = true } = {}) {
	return new Response(
		new ReadableStream({
			start(c) {
				for (const f of frames) c.enqueue(part(f));
				if (close) c.close();
			}
		}),
		{ headers: MJPEG }
	);
}

const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
const notFound = () => json({ detail: 'No session has this viewer link' }, 404);
const jpeg1 = new Uint8Array([0xff, 0xd8, 1, 0xff, 0xd9]);
const jpeg2 = new Uint8Array([0xff, 0xd8, 2, 0xff, 0xd9]);

/** A fetch that answers from a script, one entry per call; a function entry may throw. */
function scripted(answers: (Response | (() => Response))[]) {
	const calls: string[] = [];
	const f = vi.fn(async (url: string) => {
		calls.push(url);
		const a = answers.shift();
		if (!a) throw new Error('no more answers');
		return typeof a === 'function' ? a() : a;
	});
	return { fetch: f, calls };
}

const noSleep = () => Promise.resolve();

describe('viewer URLs', () => {
	it('points the page link at our viewer route, absolute', () => {
		expect(viewerPageUrl(loc, 'kq3-_Ab')).toBe('http://192.168.1.20:7860/?view=viewer&token=kq3-_Ab');
		expect(viewerPageUrl({ origin: 'https://x.test', pathname: '/live/' }, 'a b')).toBe('https://x.test/live/?view=viewer&token=a%20b');
	});

	it("uses the server's view_path for the raw stream, falling back to /api/view/{token}", () => {
		expect(viewStreamUrl(loc, 'tok', '/api/view/tok')).toBe('http://192.168.1.20:7860/api/view/tok');
		expect(viewStreamUrl(loc, 'tok')).toBe('http://192.168.1.20:7860/api/view/tok');
		// Never another host.
		expect(viewStreamUrl(loc, 'tok', '//evil.test/x')).toBe('http://192.168.1.20:7860/api/view/tok');
		expect(viewStreamUrl(loc, 'tok', 'https://evil.test/x')).toBe('http://192.168.1.20:7860/api/view/tok');
	});
});

describe('fetchViewerLinks', () => {
	it('asks for the token of the session and gives both links', async () => {
		const s = scripted([json({ viewer_token: 'T0k3n', view_path: '/api/view/T0k3n' })]);
		const links = await fetchViewerLinks('user 1', loc, { fetch: s.fetch });
		expect(s.calls).toEqual(['/api/viewer-token/user%201']);
		expect(links).toEqual({
			token: 'T0k3n',
			page: 'http://192.168.1.20:7860/?view=viewer&token=T0k3n',
			stream: 'http://192.168.1.20:7860/api/view/T0k3n'
		});
	});

	it('says the session is not live on 404', async () => {
		const s = scripted([notFound()]);
		const e = await fetchViewerLinks('u', loc, { fetch: s.fetch }).catch((x) => x);
		expect(e).toBeInstanceOf(ViewerLinkError);
		expect(e.status).toBe(404);
		expect(e.message).toMatch(/not connected/);
	});

	it('reports other failures in words', async () => {
		await expect(fetchViewerLinks('u', loc, { fetch: scripted([json({}, 500)]).fetch })).rejects.toThrow('HTTP 500');
		await expect(fetchViewerLinks('u', loc, { fetch: scripted([json({ view_path: '/x' })]).fetch })).rejects.toThrow('no viewer token');
		await expect(fetchViewerLinks('u', loc, { fetch: scripted([]).fetch })).rejects.toThrow('cannot be reached');
	});
});

describe('watchViewStream', () => {
	function watch(answers: (Response | (() => Response))[], extra: { signal?: AbortSignal; maxFailures?: number } = {}) {
		const s = scripted(answers);
		const states: ViewerState[] = [];
		const frames: number[] = [];
		const done = watchViewStream({
			url: '/api/view/tok',
			fetch: s.fetch,
			sleep: noSleep,
			onFrame: (j) => frames.push(j[2]),
			onState: (st) => states.push(st),
			...extra
		});
		return { done, states, frames, calls: s.calls };
	}

	it('shows the frames, and ends when the session ended (stream closed, then 404)', async () => {
		const w = watch([stream([jpeg1, jpeg2]), notFound()]);
		expect(await w.done).toBe('ended');
		expect(w.frames).toEqual([1, 2]);
		expect(w.states).toEqual(['connecting', 'waiting', 'live', 'connecting', 'ended']);
		expect(w.calls).toEqual(['/api/view/tok', '/api/view/tok']);
	});

	it('ends at once for a link that is dead already', async () => {
		const w = watch([notFound()]);
		expect(await w.done).toBe('ended');
		expect(w.frames).toEqual([]);
		expect(w.states).toEqual(['connecting', 'ended']);
	});

	it('goes on when the stream comes back after a hiccup', async () => {
		const w = watch([stream([jpeg1]), stream([jpeg2]), notFound()]);
		expect(await w.done).toBe('ended');
		expect(w.frames).toEqual([1, 2]);
		expect(w.states.filter((s) => s === 'live')).toHaveLength(2);
	});

	it('gives up as "unreachable" after repeated network errors', async () => {
		const boom = () => {
			throw new TypeError('Failed to fetch');
		};
		const w = watch([boom, boom, boom], { maxFailures: 3 });
		expect(await w.done).toBe('unreachable');
		expect(w.states.at(-1)).toBe('unreachable');
		expect(w.calls).toHaveLength(3);
	});

	it('does not spin on streams that keep closing without a frame', async () => {
		const w = watch([stream([]), stream([]), stream([])], { maxFailures: 3 });
		expect(await w.done).toBe('ended');
		expect(w.calls).toHaveLength(3);
	});

	it('retries a server error, then shows the stream', async () => {
		const w = watch([json({ detail: 'x' }, 503), stream([jpeg1]), notFound()]);
		expect(await w.done).toBe('ended');
		expect(w.frames).toEqual([1]);
	});

	it('says "too many viewers" on 429 and keeps asking, slowly, until a place is free', async () => {
		const s = scripted([
			json({ detail: 'This session has 8 viewers; the limit is 8' }, 429),
			...Array.from({ length: 7 }, () => json({ detail: 'This session has 8 viewers; the limit is 8' }, 429)),
			stream([jpeg1]),
			notFound()
		]);
		const seen: [ViewerState, string | undefined][] = [];
		const pauses: number[] = [];
		const frames: number[] = [];
		const done = watchViewStream({
			url: '/api/view/tok',
			fetch: s.fetch,
			sleep: async (ms) => void pauses.push(ms),
			maxFailures: 3, // more 429s than this: they are not failures
			onFrame: (j) => frames.push(j[2]),
			onState: (st, d) => seen.push([st, d])
		});
		expect(await done).toBe('ended');
		expect(s.calls).toHaveLength(10);
		expect(frames).toEqual([1]);
		const states = seen.map(([st]) => st);
		// No "connecting" between the tries: the page keeps saying why it waits.
		expect(states).toEqual(['connecting', ...Array(8).fill('full'), 'waiting', 'live', 'connecting', 'ended']);
		expect(seen[1][1]).toBe('This session has 8 viewers; the limit is 8');
		expect(pauses.slice(0, 8)).toEqual(Array(8).fill(5000));
	});

	it('only a 404 means the link is dead, not a 429', async () => {
		const tooMany = () => json({ detail: 'This session has 2 viewers; the limit is 2' }, 429);
		const w = watch([tooMany(), tooMany(), notFound()], { maxFailures: 1 });
		expect(await w.done).toBe('ended');
		expect(w.states).toEqual(['connecting', 'full', 'full', 'ended']);
	});

	it('stops quietly when aborted while waiting for a place', async () => {
		const ac = new AbortController();
		const s = scripted([json({ detail: 'full' }, 429), json({ detail: 'full' }, 429)]);
		const done = watchViewStream({
			url: '/api/view/tok',
			fetch: s.fetch,
			sleep: async () => ac.abort(),
			signal: ac.signal,
			onFrame: () => {},
			onState: () => {}
		});
		expect(await done).toBeNull();
		expect(s.calls).toHaveLength(1);
	});

	it('stops quietly when aborted', async () => {
		const ac = new AbortController();
		const s = scripted([stream([jpeg1], { close: false })]);
		const states: ViewerState[] = [];
		const done = watchViewStream({
			url: '/api/view/tok',
			fetch: s.fetch,
			sleep: noSleep,
			signal: ac.signal,
			onFrame: () => ac.abort(),
			onState: (st) => states.push(st)
		});
		expect(await done).toBeNull();
		expect(states).toEqual(['connecting', 'waiting', 'live']);
	});
});

describe('copyText', () => {
	afterEach(() => vi.unstubAllGlobals());

	it('uses the Clipboard API when there is one', async () => {
		const writeText = vi.fn(async () => {});
		vi.stubGlobal('navigator', { clipboard: { writeText } });
		expect(await copyText('http://x/')).toBe(true);
		expect(writeText).toHaveBeenCalledWith('http://x/');
	});

	it('falls back to execCommand, and says when nothing worked', async () => {
		vi.stubGlobal('navigator', {
			clipboard: {
				writeText: async () => {
					throw new Error('NotAllowedError');
				}
			}
		});
		const ta = { value: '', style: {} as Record<string, string>, setAttribute() {}, select: vi.fn(), remove: vi.fn() };
		const doc = { body: { append: vi.fn() }, createElement: () => ta, execCommand: vi.fn(() => true) } as unknown as Document;
		expect(await copyText('link', doc)).toBe(true);
		expect(ta.value).toBe('link');
		expect(ta.remove).toHaveBeenCalled();
		const refusing = { ...doc, execCommand: () => false } as unknown as Document;
		expect(await copyText('link', refusing)).toBe(false);
		expect(await copyText('link', undefined)).toBe(false);
	});
});
