/**
 * Read-only viewer links (`GET /api/viewer-token/{user_id}`, `GET /api/view/{token}`).
 *
 * The owner's page asks for the token of its live session and offers two absolute URLs: our viewer
 * page (`/?view=viewer&token=…`: full window, black, says when the stream ended) and the raw MJPEG
 * stream (`/api/view/…`, for an OBS browser source or an `<img src>`). Both die with the session.
 *
 * The viewer page reads the stream with `watchViewStream`: fetch + the multipart parser, so it knows
 * when the stream ends and can tell "the session ended" (404 from then on) from "the server is gone",
 * and from "too many viewers right now" (429: the server's `--max-viewers` per session).
 */
import { readMultipart, type StreamEnd } from './mjpeg';
import { serverDetail } from './notices';

type Loc = Pick<Location, 'origin' | 'pathname'>;
type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

export interface ViewerLinks {
	token: string;
	/** Our viewer page, absolute. */
	page: string;
	/** The raw MJPEG stream, absolute (OBS browser source, `<img src>`, VLC…). */
	stream: string;
}

/** The page route that shows a viewer stream: the static server serves only `/`, hence the query. */
export function viewerPageUrl(loc: Loc, token: string): string {
	return `${loc.origin}${loc.pathname}?view=viewer&token=${encodeURIComponent(token)}`;
}

/** The stream of a token, absolute; `viewPath` is the server's `view_path` when it gave one. */
export function viewStreamUrl(loc: Pick<Location, 'origin'>, token: string, viewPath?: string): string {
	const path = viewPath && viewPath.startsWith('/') && !viewPath.startsWith('//') ? viewPath : `/api/view/${encodeURIComponent(token)}`;
	return `${loc.origin}${path}`;
}

/** Why no link could be had, in words for the owner. */
export class ViewerLinkError extends Error {
	constructor(
		message: string,
		readonly status: number | null
	) {
		super(message);
		this.name = 'ViewerLinkError';
	}
}

/** Ask the server for the viewer token of a connected session. Throws a ViewerLinkError. */
export async function fetchViewerLinks(userId: string, loc: Loc, opts: { fetch?: Fetch; timeoutMs?: number } = {}): Promise<ViewerLinks> {
	const f = opts.fetch ?? ((u, i) => fetch(u, i));
	const ac = new AbortController();
	const t = setTimeout(() => ac.abort(), opts.timeoutMs ?? 5000);
	let res: Response;
	try {
		res = await f(`/api/viewer-token/${encodeURIComponent(userId)}`, { signal: ac.signal, cache: 'no-store' });
	} catch {
		throw new ViewerLinkError(ac.signal.aborted ? 'The server did not answer within 5 s.' : 'The server cannot be reached.', null);
	} finally {
		clearTimeout(t);
	}
	if (res.status === 404) {
		void res.body?.cancel().catch(() => {});
		throw new ViewerLinkError('The session is not connected (any more): viewer links exist only while it is live.', 404);
	}
	if (!res.ok) {
		void res.body?.cancel().catch(() => {});
		throw new ViewerLinkError(`The server answered HTTP ${res.status}.`, res.status);
	}
	let body: { viewer_token?: unknown; view_path?: unknown };
	try {
		body = (await res.json()) as typeof body;
	} catch {
		throw new ViewerLinkError('The server sent no viewer token.', res.status);
	}
	const token = body?.viewer_token;
	if (typeof token !== 'string' || !token) throw new ViewerLinkError('The server sent no viewer token.', res.status);
	const viewPath = typeof body.view_path === 'string' ? body.view_path : undefined;
	return { token, page: viewerPageUrl(loc, token), stream: viewStreamUrl(loc, token, viewPath) };
}

/**
 * What a viewer sees:
 * - `connecting`: opening the stream (first time, or again after a hiccup);
 * - `waiting`: the stream is open, no frame yet (the owner's output has not started);
 * - `live`: frames arrive (sent once, at the first frame of each opening);
 * - `full`: the session has as many viewers as the server allows (429); tried again every few
 *   seconds, for as long as it takes;
 * - `ended`: the session is over (the token gets 404, or the stream keeps closing): final;
 * - `unreachable`: the server cannot be reached after several tries: final.
 */
export type ViewerState = 'connecting' | 'waiting' | 'live' | 'full' | 'ended' | 'unreachable';

export interface WatchOptions {
	/** The stream, e.g. `/api/view/{token}`. */
	url: string;
	onFrame: (jpeg: Uint8Array) => void;
	onState: (state: ViewerState, detail?: string) => void;
	signal?: AbortSignal;
	fetch?: Fetch;
	sleep?: (ms: number) => Promise<void>;
	/** Failed openings in a row (network error, 5xx, a stream closing with no frame) before giving up. */
	maxFailures?: number;
	/** Pause before asking again after "too many viewers" (ms). */
	fullRetryMs?: number;
}

/**
 * Show a viewer stream until the session ends. A stream that closes is opened again: a 404 then
 * means the session ended (the server forgets the token with it), a new stream means it was a
 * hiccup. A 429 (too many viewers) is no failure: the session is live, so it is asked again, slowly,
 * until a place is free. Resolves with the final state, or `null` when `signal` aborted.
 */
export async function watchViewStream(o: WatchOptions): Promise<ViewerState | null> {
	const f = o.fetch ?? ((u, i) => fetch(u, i));
	const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
	const maxFailures = o.maxFailures ?? 5;
	const fullRetryMs = o.fullRetryMs ?? 5000;
	const aborted = () => !!o.signal?.aborted;
	let failures = 0;
	/** The last answer was 429: keep saying so while asking again (no "Connecting…" flicker). */
	let full = false;
	let lastFailure: 'network' | 'http' | 'empty' = 'network';
	let lastStatus = 0;
	for (;;) {
		if (aborted()) return null;
		if (failures > 0) {
			if (failures >= maxFailures) {
				if (lastFailure === 'network') {
					o.onState('unreachable', 'The server cannot be reached.');
					return 'unreachable';
				}
				o.onState('ended', lastFailure === 'http' ? `The server answered HTTP ${lastStatus}.` : undefined);
				return 'ended';
			}
			await sleep(Math.min(4000, 500 * 2 ** (failures - 1)));
			if (aborted()) return null;
		}
		if (!full) o.onState('connecting');
		let res: Response;
		try {
			res = await f(o.url, { signal: o.signal, cache: 'no-store' });
		} catch {
			if (aborted()) return null;
			full = false;
			failures++;
			lastFailure = 'network';
			continue;
		}
		full = res.status === 429;
		if (res.status === 404) {
			void res.body?.cancel().catch(() => {});
			o.onState('ended');
			return 'ended';
		}
		if (res.status === 429) {
			const detail = serverDetail(await res.json().catch(() => null));
			if (aborted()) return null;
			failures = 0; // the server answered, and the session is live
			o.onState('full', detail || undefined);
			await sleep(fullRetryMs);
			continue;
		}
		if (!res.ok) {
			void res.body?.cancel().catch(() => {});
			failures++;
			lastFailure = 'http';
			lastStatus = res.status;
			continue;
		}
		o.onState('waiting');
		let frames = 0;
		const end: StreamEnd = await readMultipart(
			res,
			(jpeg) => {
				if (frames++ === 0) {
					failures = 0;
					o.onState('live');
				}
				o.onFrame(jpeg);
			},
			o.signal
		);
		if (aborted() || end === 'aborted') return null;
		// The server closed the stream: normally the session ended (the next try gets 404).
		if (frames === 0) {
			failures++;
			lastFailure = end === 'error' ? 'network' : 'empty';
		} else {
			failures = end === 'error' ? 1 : 0;
			lastFailure = 'network';
		}
	}
}

/**
 * Put text on the clipboard: the async Clipboard API where there is one (secure origins), else the
 * old execCommand on a hidden textarea (plain http on a LAN). Resolves whether it worked.
 */
export async function copyText(text: string, doc: Document | undefined = globalThis.document): Promise<boolean> {
	const nav = globalThis.navigator as Navigator | undefined;
	if (nav?.clipboard?.writeText) {
		try {
			await nav.clipboard.writeText(text);
			return true;
		} catch {
			/* not allowed here: try the old way */
		}
	}
	if (!doc?.body) return false;
	const ta = doc.createElement('textarea');
	ta.value = text;
	ta.setAttribute('readonly', '');
	ta.style.position = 'fixed';
	ta.style.opacity = '0';
	ta.style.top = '0';
	doc.body.append(ta);
	try {
		ta.select();
		return doc.execCommand?.('copy') === true;
	} catch {
		return false;
	} finally {
		ta.remove();
	}
}
