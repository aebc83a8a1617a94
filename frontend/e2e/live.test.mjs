// End-to-end: the built page in Debian's headless Chromium (fake camera fed from a y4m clip made
// here) against the real server with miniature models. Run with `npm run e2e` from frontend/.
//
// The page streams over WebRTC where it can (image pipelines without an image prompt): the tests
// that are about the websocket's frames or the MJPEG stream open it with ?transport=mjpeg.
//
// Every test stands alone: it opens its own browser context (and page), and whatever it opened is
// closed after it (afterEach), which then waits until the server reports no user left, so the next
// test finds the single --max-users 1 place free. One server per describe, both started by the
// first test that runs. Any single test runs alone:
// node --test --test-name-pattern='Stop ends' e2e/live.test.mjs (after `npm run build`).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import {
	INIT_SCRIPT,
	PYTHON,
	ServerProcess,
	artifact,
	freePort,
	launchChromium,
	waitFor,
	writeBmp,
	writeY4m
} from './harness.mjs';

const FRAME_TIMEOUT = 90_000; // first frames on a slow, loaded 2-core machine
const IDLE_TIMEOUT_S = 10;

// What Pillow reads from a snapshot: its EXIF (ASCII values are UTF-8 bytes, which Pillow hands over
// as Latin-1; the UserComment is a character code and UTF-16 in the file's byte order, big-endian
// here) and its JPEG comment.
const READ_WITH_PILLOW = `
import json, sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im.load()
    exif = im.getexif()
    sub = exif.get_ifd(0x8769)
    comment = sub.get(0x9286, b"")
    print(json.dumps({
        "format": im.format, "size": im.size,
        "description": exif.get(0x010E, "").encode("latin-1").decode("utf-8"),
        "software": exif.get(0x0131), "date": exif.get(0x0132), "date_original": sub.get(0x9003),
        "user_comment_code": comment[:8].decode("latin-1"), "user_comment": comment[8:].decode("utf-16-be"),
        "comment": im.info.get("comment", b"").decode("utf-8"),
    }))
`;

const tmp = mkdtempSync(path.join(tmpdir(), 'ld-e2e-'));
const clip = writeY4m(path.join(tmp, 'clip.y4m'));
const bmp = writeBmp(path.join(tmp, 'input.bmp'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// ------------------------------------------------------------------ a suite and what its tests open
/**
 * One describe's server and Chromium, and what each test opened (contexts, browsers, fetches),
 * closed after it. After each test: no page threw, and the server reports no user left, so the next
 * test finds the single place free.
 *
 * The first test that runs starts the servers of all the suites at once (two at once take about 8 s
 * on two cores, one after the other about 12 s); each suite stops its own in its `after` hook,
 * which runs even when all its tests were filtered out.
 */
class LiveSuite {
	static all = [];

	constructor(serverArgs, pipeline) {
		this.server = new ServerProcess(serverArgs, pipeline);
		this.browser = null;
		this.ready = false;
		this.starting = null;
		this.cleanups = [];
		this.pageErrors = [];
		LiveSuite.all.push(this);
		beforeEach(async () => {
			for (const suite of LiveSuite.all) suite.startOnce();
			await this.starting;
			await this.waitForNoUsers();
		}, { timeout: 300_000 });
		afterEach(async () => {
			while (this.cleanups.length) await this.cleanups.pop()().catch(() => {});
			if (this.ready && !this.server.exited) await this.waitForNoUsers();
			const errors = this.pageErrors.splice(0);
			assert.deepEqual(errors, [], 'uncaught exceptions in the page');
		});
		after(async () => {
			await this.browser?.close().catch(() => {});
			await this.server.stop();
		});
	}

	startOnce() {
		if (!this.starting) {
			this.starting = (async () => {
				await this.server.start();
				this.browser = await launchChromium({ clip });
				this.ready = true;
			})();
			this.starting.catch(() => {}); // reported by the suite's own tests, if any run
		}
	}

	/** Resolves once the server has no session left (GET /api/health `users`). */
	async waitForNoUsers() {
		const { url } = this.server;
		await waitFor(async () => (await (await fetch(`${url}/api/health`)).json()).users === 0, {
			timeout: 30_000,
			what: `${url} to report 0 users`
		});
	}

	/** Runs `fn` after the current test. */
	onCleanup(fn) {
		this.cleanups.push(fn);
	}

	/** A page in a new browser context of `b` (default: the suite's Chromium). */
	async newPage(b = this.browser, options = {}) {
		const context = await b.newContext({ viewport: { width: 1440, height: 900 }, acceptDownloads: true, ...options });
		this.onCleanup(() => context.close());
		await context.addInitScript(INIT_SCRIPT + RECORDER);
		context.on('page', (p) => p.on('pageerror', (e) => this.pageErrors.push(`${p.url()}: ${e}`)));
		return context.newPage();
	}

	/** A new page of the server, loaded; `query`: '?transport=mjpeg', say. */
	async livePage(options, query = '') {
		const page = await this.newPage(this.browser, options);
		await open(page, `${this.server.url}/${query}`);
		return page;
	}

	/** Another Chromium (other flags). */
	async extraBrowser(options) {
		const b = await launchChromium(options);
		this.onCleanup(() => b.close());
		return b;
	}
}

// Counts the send_frame requests the page got and the binary frames it sent, keeps the last one;
// keeps the page's peer connections and what it sent on data channels (__tamperChannel, when a
// test sets it, rewrites the next message sent there).
const RECORDER = `
(() => {
	window.__peers = [];
	const NativePeerConnection = window.RTCPeerConnection;
	window.RTCPeerConnection = class extends NativePeerConnection {
		constructor(...args) {
			super(...args);
			window.__peers.push(this);
		}
	};
	window.__channelSends = [];
	window.__tamperChannel = null;
	const channelSend = RTCDataChannel.prototype.send;
	RTCDataChannel.prototype.send = function (data) {
		if (window.__tamperChannel) {
			data = window.__tamperChannel(data);
			window.__tamperChannel = null;
		}
		window.__channelSends.push(data);
		return channelSend.call(this, data);
	};
	window.__sendFrames = 0;
	window.__binarySends = 0;
	window.__lastFrame = null;
	const send = WebSocket.prototype.send;
	WebSocket.prototype.send = function (data) {
		if (typeof data !== 'string') {
			const size = data.size ?? data.byteLength;
			if (size > 0) { window.__binarySends++; window.__lastFrame = data; }
		}
		return send.call(this, data);
	};
	const Native = window.WebSocket;
	window.WebSocket = class extends Native {
		constructor(...args) {
			super(...args);
			this.addEventListener('message', (e) => {
				if (typeof e.data === 'string' && e.data.includes('"send_frame"')) window.__sendFrames++;
			});
		}
	};
})();
`;

// A MIDI controller for the page: navigator.requestMIDIAccess answers with one input (as Chromium's:
// it stays in the map when unplugged), which the test plays through window.__midi.
const FAKE_MIDI = `
(() => {
	const input = { id: 'fake-1', name: 'Fake MIDI Controller', manufacturer: 'e2e', type: 'input', state: 'connected', connection: 'closed', onmidimessage: null };
	const access = { inputs: new Map([[input.id, input]]), outputs: new Map(), sysexEnabled: false, onstatechange: null };
	Object.defineProperty(navigator, 'requestMIDIAccess', { configurable: true, value: async () => access });
	window.__midi = {
		send: (...bytes) => input.onmidimessage?.({ data: new Uint8Array(bytes) }),
		unplug: () => {
			input.state = 'disconnected';
			access.onstatechange?.({ port: input });
		}
	};
})();
`;

async function open(page, url) {
	await page.goto(url);
	await page.waitForSelector('[data-param]', { timeout: 30_000 });
}

const debug = (page, expr) => page.evaluate(`window.__liveDiffusion.${expr}`);
const startButton = (page) => page.locator('[data-testid=start]');
/** The output: an <img> over MJPEG, a <video> over WebRTC. */
const OUTPUT = '[data-testid=output-image], [data-testid=output-video]';
const transportShown = (page) => page.locator('[data-testid=transport]').innerText();
const streamEndedNote = (page) => page.locator('[data-testid=stream-ended]');

async function startButtonText(page) {
	return (await startButton(page).innerText()).replace(/\s+/g, ' ').trim();
}

async function waitForState(page, state, timeout = 30_000) {
	await waitFor(async () => (await debug(page, 'state()')) === state, { timeout, what: `state ${state}` });
}

async function waitForFrames(page, n, timeout = FRAME_TIMEOUT) {
	await waitFor(async () => (await debug(page, 'framesShown()')) >= n, { timeout, what: `${n} output frames` });
}

/** Waits for `more` output frames after the ones shown so far. */
async function waitForMoreFrames(page, more = 2) {
	await waitForFrames(page, (await debug(page, 'framesShown()')) + more);
}

/** Waits until the status bar shows this users count ("1/8": one user, eight at most). */
async function waitForUsers(page, shown) {
	let last;
	await waitFor(
		async () => (last = await page.evaluate(() => document.querySelector('[data-testid=users]')?.textContent?.replace(/\s/g, '') ?? null)) === shown,
		{ what: `the status bar to show users ${shown}` }
	).catch((e) => assert.fail(`${e.message}; it shows ${last === null ? 'no users count' : last}`));
}

async function noticeText(page) {
	const n = page.locator('[data-testid=notice]');
	return (await n.count()) ? (await n.innerText()).replace(/\s+/g, ' ') : '';
}

async function waitForNotice(page, re, timeout = 30_000) {
	return waitFor(async () => re.test(await noticeText(page)), { timeout, what: `a notice matching ${re}` });
}

/** The session is over and the button offers Start again (not stuck on Stop or Connecting). */
async function waitForIdle(page, timeout = 30_000) {
	await waitFor(
		async () => (await debug(page, 'state()')) === 'idle' && /^Start\b/.test(await startButtonText(page)) && (await startButton(page).isEnabled()),
		{ timeout, what: 'the page to be idle with a usable Start button' }
	);
}

async function tracksEnded(page) {
	const tracks = await debug(page, 'tracks()');
	return tracks.length > 0 && tracks.every((t) => t.readyState === 'ended');
}

/** A small hash of the output picture's pixels (an <img> or a <video>); null while there is none. */
function outputHash(page, selector = OUTPUT) {
	return page.evaluate((selector) => {
		const el = document.querySelector(selector);
		const shown = el?.tagName === 'VIDEO' ? el.videoWidth > 0 : el?.complete && el.naturalWidth > 0;
		if (!shown) return null;
		const c = document.createElement('canvas');
		c.width = 64;
		c.height = 64;
		const x = c.getContext('2d');
		x.drawImage(el, 0, 0, 64, 64);
		const d = x.getImageData(0, 0, 64, 64).data;
		let h = 0;
		for (let i = 0; i < d.length; i += 3) h = (h * 31 + d[i]) >>> 0;
		return h;
	}, selector);
}

/** The natural size of the picture at `selector` (an <img> or a <video>), read in the moment it is
 * shown: a stream replaces the picture several times a second, and one being replaced may have no size yet. */
function shownSize(page, selector = OUTPUT, what = 'a frame shown') {
	return waitFor(
		() => page.evaluate((selector) => {
			const el = document.querySelector(selector);
			if (el?.tagName === 'VIDEO') return el.videoWidth > 0 ? [el.videoWidth, el.videoHeight] : null;
			return el && el.complete && el.naturalWidth > 0 ? [el.naturalWidth, el.naturalHeight] : null;
		}, selector),
		{ timeout: FRAME_TIMEOUT, what }
	);
}

/** Waits until the output showed `n` different pictures. */
async function waitForDifferentOutputs(page, n, selector) {
	const seen = new Set();
	await waitFor(
		async () => {
			const h = await outputHash(page, selector);
			if (h !== null) seen.add(h);
			return seen.size >= n;
		},
		{ timeout: FRAME_TIMEOUT, interval: 150, what: `${n} different output frames` }
	);
}

async function startSession(page, frames = 1) {
	await startButton(page).click();
	await waitForState(page, 'live');
	await waitForFrames(page, frames);
}

async function stopSession(page) {
	if ((await debug(page, 'state()')) !== 'idle') await startButton(page).click();
	await waitForIdle(page);
}

/** Types a value into a parameter's number box, as a person would. */
async function setNumber(page, id, value) {
	const box = page.locator(`[data-param=${id}] input.num`);
	await box.fill(String(value));
	await box.press('Enter');
	await waitFor(async () => (await page.locator(`#param-${id}`).inputValue()) === String(value), { what: `${id} = ${value}` });
}

const randomTag = (what) => `${what} ${Math.random().toString(36).slice(2, 8)}`;

/** Reads an MJPEG response until `n` JPEG parts arrived, it ended or `timeout` passed: the count. */
async function readParts(res, n, timeout = FRAME_TIMEOUT) {
	const reader = res.body.getReader();
	const timer = setTimeout(() => reader.cancel().catch(() => {}), timeout);
	let text = '';
	let parts = 0;
	try {
		while (parts < n) {
			const { value, done } = await reader.read();
			if (done) break;
			text += Buffer.from(value).toString('latin1');
			parts = text.split('Content-Type: image/jpeg').length - 1;
		}
	} finally {
		clearTimeout(timer);
	}
	return parts;
}

// ------------------------------------------------------------------ suite
describe('live page against the real server', { timeout: 900_000 }, () => {
	// --host 0.0.0.0, as for phones on a LAN: a server bound to loopback answers only loopback names,
	// and the insecure-origin test opens the page by a LAN name (which the server must be told).
	const suite = new LiveSuite([
		'--host', '0.0.0.0', '--allowed-hosts', 'live-diffusion.test', '--max-users', '1', '--idle-timeout', String(IDLE_TIMEOUT_S)
	]);
	const { server } = suite;
	let settings;
	let props;
	const livePage = (options) => suite.livePage(options);
	const mjpegPage = (options) => suite.livePage(options, '?transport=mjpeg');

	beforeEach(async () => {
		settings ??= await (await fetch(`${server.url}/api/settings`)).json();
		props = settings.input_params.properties;
	});

	it('loads with controls built from /api/settings', async () => {
		const page = await livePage();
		const title = settings.info.properties.title.default;
		assert.equal(await page.locator('[data-testid=pipeline-title]').innerText(), title);
		for (const [name, p] of Object.entries(props)) {
			const field = page.locator(`[data-param="${p.id ?? name}"]`);
			assert.equal(await field.count(), 1, `a widget for ${name}`);
			assert.equal(await field.isVisible(), !p.hide, `${name} visible unless hidden`);
			assert.match(await field.textContent(), new RegExp(p.title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
		}
		assert.equal(await page.locator('#param-prompt').inputValue(), props.prompt.default);
		const strength = page.locator('#param-strength');
		assert.equal(await strength.getAttribute('type'), 'range');
		assert.deepEqual(
			[await strength.getAttribute('min'), await strength.getAttribute('max'), await strength.getAttribute('step')].map(Number),
			[props.strength.minimum, props.strength.maximum, props.strength.step]
		);
		assert.equal(Number(await strength.inputValue()), props.strength.default);
		await page.locator('summary', { hasText: 'Advanced' }).click();
		assert.ok(await page.locator('[data-param=width]').isVisible(), 'hidden fields appear under Advanced');
		assert.ok(await page.locator('[data-param=seed] button[aria-label="Random seed"]').isVisible());
		// The pipeline's page content, and the user limit (--max-users 1, nobody on).
		assert.match(await page.locator('.page-content').innerText(), /Strength/);
		await waitForUsers(page, '0/1');
		assert.match(await startButtonText(page), /^Start/);
		await page.locator('summary', { hasText: 'Advanced' }).click();
		await page.screenshot({ path: artifact('01-idle-desktop.png') });
	});

	it('over MJPEG (?transport=mjpeg), Start produces output frames of the pipeline size that change over time', async () => {
		const page = await mjpegPage();
		await startSession(page, 3);
		assert.equal(await transportShown(page), 'MJPEG');
		assert.equal(await page.evaluate(() => window.__peers.length), 0, 'no WebRTC');
		const width = props.width.default;
		const height = props.height.default;
		assert.deepEqual(await shownSize(page), [width, height]);
		// Different pictures keep coming (the fake camera shows a moving square).
		await waitForDifferentOutputs(page, 3);
		// The page captured frames at the pipeline size, only when asked.
		const frame = await page.evaluate(async () => {
			const bmp = await createImageBitmap(new Blob([window.__lastFrame], { type: 'image/jpeg' }));
			return { w: bmp.width, h: bmp.height, sent: window.__binarySends, asked: window.__sendFrames };
		});
		assert.deepEqual([frame.w, frame.h], [width, height]);
		assert.ok(frame.sent >= 3 && frame.sent <= frame.asked, `frames sent only on request (${frame.sent} sent, ${frame.asked} asked)`);
		// The input preview runs, the status bar measures.
		const video = await page.evaluate(() => {
			const v = document.querySelector('[data-testid=input-video]');
			return [v.videoWidth, v.videoHeight, v.paused];
		});
		assert.deepEqual(video, [320, 240, false]);
		await waitFor(async () => /\d/.test(await page.locator('[data-testid=fps]').innerText()), { what: 'fps' });
		await waitFor(async () => /\d+ ms/.test(await page.locator('[data-testid=latency]').innerText()), { what: 'latency' });
		assert.equal(await page.locator('[data-testid=connection-state]').innerText(), 'Live');
		await waitForUsers(page, '1/1');
		await waitForMoreFrames(page);
		await page.screenshot({ path: artifact('02-live-desktop.png') });
	});

	it('streams over WebRTC by default: the camera as a track, the output in a video, the parameters on a data channel', async () => {
		const page = await livePage();
		await startSession(page, 2);
		assert.equal(await transportShown(page), 'WebRTC');
		assert.equal(await page.locator('[data-testid=output-image]').count(), 0, 'no MJPEG picture');
		assert.deepEqual(await shownSize(page, '[data-testid=output-video]'), [props.width.default, props.height.default]);
		await waitForDifferentOutputs(page, 3, '[data-testid=output-video]');
		assert.equal(await page.evaluate(() => window.__binarySends), 0, 'no JPEG frames over the websocket');
		assert.equal(await page.locator('[data-testid=connection-state]').innerText(), 'Live');
		await waitFor(async () => /\d/.test(await page.locator('[data-testid=fps]').innerText()), { what: 'fps' });
		await page.screenshot({ path: artifact('02-live-webrtc.png') });
		// All the parameters when the channel opened, then each change at once.
		const opening = JSON.parse(await page.evaluate(() => window.__channelSends[0]));
		assert.equal(opening.prompt, props.prompt.default);
		assert.equal(opening.strength, props.strength.default);
		const tag = randomTag('webrtc prompt');
		await page.locator('#param-prompt').fill(tag);
		await waitFor(() => page.evaluate((tag) => window.__channelSends.some((m) => JSON.parse(m).prompt === tag), tag), {
			what: 'the new prompt on the data channel'
		});
		// The server checks what comes on the channel and answers there: an out-of-range value, once.
		await page.evaluate(() => (window.__tamperChannel = (m) => JSON.stringify({ ...JSON.parse(m), steps: 1000 })));
		await setNumber(page, 'strength', '0.73');
		await waitForNotice(page, /Server error.*steps/i);
		assert.equal(await debug(page, 'state()'), 'live');
		await waitForMoreFrames(page);
	});

	it('falls back to MJPEG, and says so, when the server refuses the WebRTC offer', async () => {
		const page = await livePage();
		const detail = "The offer's video codecs are not supported: offer VP8 or H264";
		await page.route('**/api/webrtc/**', (route) =>
			route.fulfill({ status: 400, contentType: 'application/json', body: JSON.stringify({ detail }) })
		);
		await startButton(page).click();
		await waitForNotice(page, /WebRTC did not work/);
		const text = await noticeText(page);
		assert.ok(text.includes(detail) && text.includes('HTTP 400'), `the server's reason on the page: ${text}`);
		await waitForFrames(page, 2);
		assert.equal(await transportShown(page), 'MJPEG');
		assert.equal(await page.locator('[data-testid=output-video]').count(), 0);
		assert.deepEqual(await shownSize(page, '[data-testid=output-image]'), [props.width.default, props.height.default]);
		assert.ok((await page.evaluate(() => window.__binarySends)) >= 2, 'JPEG frames over the websocket');
	});

	it('a prompt or slider change reaches the server with the next frame', async () => {
		const page = await mjpegPage();
		await startSession(page);
		const tag = randomTag('e2e prompt');
		let mark = server.mark();
		await page.locator('#param-prompt').fill(tag);
		await server.waitForLog(new RegExp(`params changed: .*prompt='${tag}'`), { from: mark });

		mark = server.mark();
		await setNumber(page, 'strength', '0.73');
		await server.waitForLog(/params changed: .*strength='0\.73'/, { from: mark });

		// The slider itself, moved with the keyboard like a person would.
		mark = server.mark();
		await page.locator('#param-strength').focus();
		await page.keyboard.press('ArrowRight');
		await waitFor(async () => (await page.locator('[data-param=strength] input.num').inputValue()) === '0.74', { what: 'strength 0.74 in the box' });
		await server.waitForLog(/params changed: .*strength='0\.74'/, { from: mark });

		// A random seed goes out too.
		mark = server.mark();
		const seedBox = page.locator('[data-param=seed] input.num');
		const seed = await seedBox.inputValue();
		await page.locator('[data-param=seed] button[aria-label="Random seed"]').click();
		await waitFor(async () => (await seedBox.inputValue()) !== seed, { what: 'a new seed in the box' });
		await server.waitForLog(new RegExp(`params changed: .*seed='?${await seedBox.inputValue()}\\b`), { from: mark });
	});

	it('switching the camera resolution releases the old camera and keeps streaming', async () => {
		const page = await livePage();
		await startSession(page);
		const before = await debug(page, 'tracks()');
		assert.equal(before.filter((t) => t.readyState === 'live').length, 1);
		await page.locator('#resolution-select').selectOption('640x480');
		await waitFor(async () => {
			const t = await debug(page, 'tracks()');
			return t.length === before.length + 1 && t.filter((x) => x.readyState === 'live').length === 1 && t.at(-1).readyState === 'live';
		}, { what: 'one new live track, the old one ended' });
		await waitForMoreFrames(page);
	});

	it('another stream of the session (an OBS source) does not stop the page output', async () => {
		const page = await livePage();
		await startSession(page, 2);
		const id = await debug(page, 'userId()');
		const ac = new AbortController();
		suite.onCleanup(async () => ac.abort());
		const res = await fetch(`${server.url}/api/stream/${id}`, { signal: ac.signal });
		assert.equal(res.status, 200);
		assert.match(res.headers.get('content-type'), /^multipart\/x-mixed-replace/);
		// The second stream gets frames, and so does the page, at the same time.
		const parts = readParts(res, 3);
		const n = await debug(page, 'framesShown()');
		await waitFor(
			async () => (await streamEndedNote(page).count()) > 0 || (await debug(page, 'framesShown()')) >= n + 3,
			{ timeout: FRAME_TIMEOUT, what: 'more frames on the page (or its stream ending)' }
		);
		assert.equal(await streamEndedNote(page).count(), 0, "the page's output stream ended when another one opened");
		assert.equal(await parts, 3, 'frames on the second stream');
		await waitForDifferentOutputs(page, 2);
		assert.equal(await debug(page, 'state()'), 'live');
		// Closing the other stream leaves the page's alone.
		ac.abort();
		await waitForMoreFrames(page);
		assert.equal(await streamEndedNote(page).count(), 0);
	});

	it("the page gets its output though others hold all four of the session's streams", async () => {
		const page = await mjpegPage();
		// The page's stream request waits until the test has opened the session's four streams.
		let release;
		const gate = new Promise((r) => (release = r));
		await page.route('**/api/stream/**', async (route) => {
			await gate;
			await route.continue();
		});
		await startButton(page).click();
		await waitForState(page, 'live');
		const id = await debug(page, 'userId()');
		const others = [];
		for (let i = 0; i < 4; i++) {
			const ac = new AbortController();
			suite.onCleanup(async () => ac.abort());
			const res = await fetch(`${server.url}/api/stream/${id}`, { signal: ac.signal });
			assert.equal(res.status, 200, `stream ${i + 1} of 4`);
			others.push(res.body.pipeTo(new WritableStream()).then(() => 'ended', () => 'ended')); // read, like a viewer
		}
		const fifth = await fetch(`${server.url}/api/stream/${id}`);
		assert.equal(fifth.status, 429, 'a fifth stream without the owner\'s token');
		release();
		// The page's stream carries the token its websocket was sent: it opens, in place of the oldest other.
		await waitForFrames(page, 2);
		assert.equal(await Promise.race([others[0], new Promise((r) => setTimeout(() => r('open'), 30_000))]), 'ended');
		assert.equal(await streamEndedNote(page).count(), 0);
		assert.doesNotMatch(await noticeText(page), /could not be opened/);
		assert.equal((await (await fetch(`${server.url}/api/health`)).json()).streams, 4);
	});

	it('a refused output stream: the page says why, and shows the output when asked again', async () => {
		const page = await mjpegPage();
		const detail = 'This session has 4 streams open; the limit is 4';
		await page.route('**/api/stream/**', (route) =>
			route.fulfill({ status: 429, contentType: 'application/json', body: JSON.stringify({ detail }) })
		);
		await startButton(page).click();
		await waitForState(page, 'live');
		await waitForNotice(page, /output stream could not be opened/);
		const text = await noticeText(page);
		assert.ok(text.includes(detail), `the server's reason on the page: ${text}`);
		assert.match(text, /HTTP 429/);
		assert.equal(await page.locator('[data-testid=output-image]').count(), 0);
		await page.unroute('**/api/stream/**');
		assert.equal(await debug(page, 'state()'), 'live');
		await page.getByRole('button', { name: 'Show it here again' }).click();
		await waitForFrames(page, 2);
		assert.doesNotMatch(await noticeText(page), /could not be opened/);
	});

	it('says when the output stream ends while the session is on, and shows it again', async () => {
		const page = await mjpegPage();
		// A stream that the server (or a proxy on the way) ends at once, without a frame.
		await page.route('**/api/stream/**', (route) =>
			route.fulfill({ status: 200, contentType: 'multipart/x-mixed-replace;boundary=frame', body: '--frame--\r\n' })
		);
		await startButton(page).click();
		await waitForState(page, 'live');
		await streamEndedNote(page).waitFor({ timeout: 30_000 });
		assert.match(await streamEndedNote(page).innerText(), /output stream ended unexpectedly/);
		assert.equal(await debug(page, 'state()'), 'live', 'the session goes on');
		assert.equal(await page.locator('[data-testid=connection-state]').innerText(), 'Connected', 'connected, no frame yet');
		await page.unroute('**/api/stream/**');
		await page.getByRole('button', { name: 'Show it here again' }).click();
		await waitForFrames(page, 2);
		assert.equal(await streamEndedNote(page).count(), 0);
		await waitForDifferentOutputs(page, 2);
	});

	it('shows a server error and keeps the session going', async () => {
		const page = await mjpegPage();
		// Rewrite the parameters on the wire to an out-of-range value, once, as a broken client would.
		let tamper = true;
		await page.routeWebSocket(/\/api\/ws\//, (ws) => {
			const upstream = ws.connectToServer();
			ws.onMessage((m) => {
				if (tamper && typeof m === 'string' && m.includes('"steps"')) {
					tamper = false;
					const p = JSON.parse(m);
					p.steps = 1000;
					m = JSON.stringify(p);
				}
				upstream.send(m);
			});
			upstream.onMessage((m) => ws.send(m));
		});
		await startButton(page).click();
		await waitForNotice(page, /Server error.*steps/i, FRAME_TIMEOUT);
		assert.equal(tamper, false);
		assert.equal(await debug(page, 'state()'), 'live');
		await waitForFrames(page, 2);
		await waitForMoreFrames(page);
	});

	it('Stop ends the camera tracks and closes the socket and the peer connection', async () => {
		const page = await livePage();
		await startSession(page);
		assert.equal(await transportShown(page), 'WebRTC');
		const mark = server.mark();
		await startButton(page).click();
		await waitForIdle(page);
		await waitFor(() => tracksEnded(page), { what: 'camera tracks ended' });
		// Closing right away, closed once the server answered the close.
		assert.ok([2, 3].includes(await debug(page, 'socketState()')));
		await waitFor(async () => (await debug(page, 'socketState()')) === 3, { what: 'socket closed' });
		assert.ok(await page.evaluate(() => window.__sockets.length > 0 && window.__sockets.every((s) => s.readyState === WebSocket.CLOSED)));
		await server.waitForLog(/session \w+: closed after/, { from: mark });
		assert.deepEqual(await page.evaluate(() => window.__peers.map((p) => p.signalingState)), ['closed']);
		// No stale output frame stays on screen.
		assert.equal(await page.locator(OUTPUT).count(), 0);
		const video = await page.evaluate(() => document.querySelector('[data-testid=input-video]')?.srcObject ?? null);
		assert.equal(video, null);
		assert.equal(await page.locator('[data-testid=connection-state]').innerText(), 'Idle');
	});

	it('keeps parameter values across a reload', async () => {
		const page = await livePage();
		const prompt = randomTag('stored prompt');
		await page.locator('#param-prompt').fill(prompt);
		await setNumber(page, 'strength', '0.74');
		await page.reload();
		await page.waitForSelector('[data-param]');
		assert.equal(await page.locator('#param-prompt').inputValue(), prompt);
		assert.equal(await page.locator('#param-strength').inputValue(), '0.74');
		// Reset parameters brings the server's defaults back.
		await page.getByRole('button', { name: /Reset/ }).click();
		assert.equal(await page.locator('#param-prompt').inputValue(), props.prompt.default);
		assert.equal(Number(await page.locator('#param-strength').inputValue()), props.strength.default);
	});

	it('MIDI learn: a knob moves a slider and the server gets it; a preset comes back on key 1; values the server sends (OSC) show; an unplugged device only says so', async () => {
		const page = await suite.newPage();
		await page.addInitScript(FAKE_MIDI);
		// The conversation as it goes, the presets the page sends kept; `toPage` speaks as the server.
		const presetsSent = [];
		let toPage;
		await page.routeWebSocket(/\/api\/ws\//, (ws) => {
			const upstream = ws.connectToServer();
			toPage = (message) => ws.send(JSON.stringify(message));
			ws.onMessage((m) => {
				if (typeof m === 'string' && m.includes('"status":"presets"')) presetsSent.push(JSON.parse(m));
				upstream.send(m);
			});
			upstream.onMessage((m) => ws.send(m));
		});
		await open(page, `${server.url}/?transport=mjpeg`); // MJPEG: the server logs the parameters that come with frames
		await page.getByRole('button', { name: 'Connect MIDI' }).click();
		await waitFor(async () => /Fake MIDI Controller/.test(await page.locator('[data-testid=midi-devices]').innerText()), { what: 'the device listed' });
		await startSession(page);

		// Learn: pick the Strength slider, turn a knob (CC 21).
		await page.getByRole('button', { name: 'Learn', exact: true }).click();
		const learnStrength = page.getByRole('button', { name: 'MIDI learn: Strength' });
		await learnStrength.click();
		await page.screenshot({ path: artifact('13-midi-learn.png'), fullPage: true });
		await page.evaluate(() => window.__midi.send(0xb0, 21, 5));
		await waitFor(async () => (await learnStrength.innerText()) === 'CC 21 · ch 1', { what: 'the knob shown on the slider' });
		await page.getByRole('button', { name: 'Done learning' }).click();
		let mark = server.mark();
		await page.evaluate(() => window.__midi.send(0xb0, 21, 32)); // 0.1 + 32/127 * 0.9 = 0.327: 0.33 on the step
		await waitFor(async () => (await page.locator('#param-strength').inputValue()) === '0.33', { what: 'strength 0.33 from the knob' });
		await server.waitForLog(/params changed: .*strength='0\.33'/, { from: mark });

		// A preset of these values in slot 1 goes to the session; the knob moves on; key 1 brings it back.
		await page.getByRole('textbox', { name: 'Preset name' }).fill('Soft');
		await page.getByRole('button', { name: 'Save', exact: true }).click();
		await waitFor(() => presetsSent.length > 0, { what: 'the presets sent to the session' });
		assert.deepEqual(presetsSent.at(-1).presets.map((p) => [p.name, p.params.strength]), [['Soft', 0.33]]);
		mark = server.mark();
		await page.evaluate(() => window.__midi.send(0xb0, 21, 127));
		await server.waitForLog(/params changed: .*strength='1\.0'/, { from: mark });
		mark = server.mark();
		await page.locator('header h1').click(); // focus outside any field
		await page.keyboard.press('1');
		await waitFor(async () => (await page.locator('#param-strength').inputValue()) === '0.33', { what: 'preset 1 recalled' });
		await server.waitForLog(/params changed: .*strength='0\.33'/, { from: mark });
		assert.doesNotMatch(await noticeText(page), /Server error/, 'the server kept the presets');

		// The server says the session's values changed elsewhere (OSC): the controls show them, and keep them.
		mark = server.mark();
		toPage({ status: 'params', params: { strength: 0.61 } });
		await waitFor(async () => (await page.locator('#param-strength').inputValue()) === '0.61', { what: 'strength 0.61 from the server' });
		await server.waitForLog(/params changed: .*strength='0\.61'/, { from: mark }); // (from the page here: the server did not have it)

		// The controller unplugged: a notice naming it; the session, the values and the mapping stay.
		await page.evaluate(() => window.__midi.unplug());
		await waitForNotice(page, /MIDI device unplugged: Fake MIDI Controller/);
		assert.match(await page.locator('[data-testid=midi-devices]').innerText(), /Fake MIDI Controller \(unplugged\)/);
		assert.equal(await page.locator('#param-strength').inputValue(), '0.61');
		assert.match(await page.locator('[data-testid=midi-panel]').innerText(), /1 mapped/);
		await waitForMoreFrames(page);
		assert.equal(await debug(page, 'state()'), 'live');
	});

	it('space starts and stops; the Fullscreen button and F enter fullscreen, F leaves it', async () => {
		const page = await livePage();
		// The output pane is the fullscreen element, and the page knows it (its fullscreen look).
		const fullscreenPane = () =>
			page.evaluate(() => {
				const el = document.fullscreenElement;
				return el === null ? null : `${el.dataset.testid} ${el.classList.contains('fullscreen')}`;
			});
		const paneLooksFullscreen = () => page.evaluate(() => document.querySelector('[data-testid=output-pane]').classList.contains('fullscreen'));
		await page.locator('header h1').click(); // focus outside any field
		await page.keyboard.press('Space');
		await waitForState(page, 'live');
		await waitForFrames(page, 1);
		await page.keyboard.press('f');
		await waitFor(async () => (await fullscreenPane()) === 'output-pane true', { what: 'fullscreen output (F)' });
		await page.keyboard.press('f');
		await waitFor(async () => (await fullscreenPane()) === null && !(await paneLooksFullscreen()), { what: 'fullscreen exit (F)' });
		await page.getByRole('button', { name: 'Fullscreen' }).click();
		await waitFor(async () => (await fullscreenPane()) === 'output-pane true', { what: 'fullscreen output (button)' });
		// (A synthesised Escape does not reach the browser's own fullscreen handling in headless Chromium.)
		await page.keyboard.press('f');
		await waitFor(async () => (await fullscreenPane()) === null && !(await paneLooksFullscreen()), { what: 'fullscreen exit (F again)' });
		// Space typed into the prompt is text, not a toggle.
		const prompt = page.locator('#param-prompt');
		await prompt.focus();
		await page.keyboard.press('End');
		await page.keyboard.press('Space');
		await waitFor(async () => (await prompt.inputValue()).endsWith(' '), { what: 'a space in the prompt' });
		assert.equal(await debug(page, 'state()'), 'live');
		await page.locator('header h1').click();
		await page.keyboard.press('Space');
		await waitForIdle(page);
		assert.ok(await tracksEnded(page));
	});

	it('snapshot downloads the output with prompt, seed and parameters embedded', async () => {
		const page = await livePage();
		const prompt = `${randomTag('snapshot')} ünïcödé ✨`;
		await page.locator('#param-prompt').fill(prompt);
		await setNumber(page, 'strength', '0.74');
		await startSession(page, 2);
		const [download] = await Promise.all([page.waitForEvent('download'), page.locator('[data-testid=snapshot]').click()]);
		const name = download.suggestedFilename();
		const seed = Number(await page.locator('[data-param=seed] input.num').inputValue());
		assert.match(name, new RegExp(`^live-diffusion_img2img_seed${seed}_\\d{8}-\\d{6}\\.jpg$`));
		// Read back by another program, as a photo tool would: Pillow.
		const read = JSON.parse(execFileSync(PYTHON, ['-c', READ_WITH_PILLOW, await download.path()], { encoding: 'utf8' }));
		assert.equal(read.format, 'JPEG');
		assert.deepEqual(read.size, [props.width.default, props.height.default]); // the output frame, decodable
		assert.equal(read.description, prompt); // EXIF ImageDescription
		assert.match(read.software, /^Live Diffusion/);
		assert.equal(read.date_original, read.date);
		assert.equal(read.date.replace(/\D/g, ''), name.match(/_(\d{8})-(\d{6})\.jpg$/).slice(1).join('')); // taken when named
		assert.equal(read.user_comment_code, 'UNICODE\0');
		const embedded = JSON.parse(read.user_comment); // EXIF UserComment: all parameters
		assert.deepEqual(JSON.parse(read.comment), embedded); // and the same as the JPEG comment
		assert.equal(embedded.pipeline, 'img2img');
		assert.equal(embedded.prompt, prompt);
		assert.equal(embedded.seed, seed);
		assert.equal(embedded.strength, 0.74);
	});

	it('the pop-out window shows the same output frames', async () => {
		const page = await livePage();
		await startSession(page);
		const [popout] = await Promise.all([page.context().waitForEvent('page'), page.getByRole('button', { name: 'Pop out' }).click()]);
		await popout.waitForLoadState();
		const size = await shownSize(popout, 'img', 'a frame in the pop-out');
		assert.deepEqual(size, [props.width.default, props.height.default]);
		await waitForDifferentOutputs(popout, 2, 'img');
		// The main page keeps its own output.
		await waitForMoreFrames(page);
		await popout.screenshot({ path: artifact('05-popout.png') });
		await stopSession(page);
		await waitFor(async () => /Stopped/.test(await popout.locator('body').innerText()), { what: 'pop-out cleared on stop' });
		assert.equal(await popout.locator('img').count(), 0);
	});

	it('Share view gives a read-only viewer link that shows the frames and ends with the session', async () => {
		// The camera, and the clipboard for the Copy button.
		const page = await livePage({ permissions: ['camera', 'clipboard-read', 'clipboard-write'] });
		const share = page.locator('[data-testid=share-view]');
		assert.ok(await share.isDisabled(), 'Share view needs a live session');
		await startSession(page, 2);
		await share.click();
		const panel = page.locator('[data-testid=share-panel]');
		await panel.waitFor();
		const link = await page.locator('[data-testid=viewer-link]').inputValue();
		const url = new URL(link);
		assert.equal(url.origin, server.url, 'an absolute link to this server');
		assert.equal(url.searchParams.get('view'), 'viewer');
		const token = url.searchParams.get('token');
		assert.ok(token && !(await debug(page, 'userId()')).includes(token), 'a token, not the user id');
		const raw = await page.locator('[data-testid=viewer-stream-link]').innerText();
		assert.equal(raw, `${server.url}/api/view/${token}`);
		assert.match(await panel.innerText(), /until this session ends/);
		// Copy link puts it on the clipboard.
		await page.locator('[data-testid=copy-viewer-link]').click();
		await waitFor(async () => (await page.evaluate(() => navigator.clipboard.readText())) === link, { what: 'the link on the clipboard' });
		await page.screenshot({ path: artifact('10-share-view.png') });
		// The raw link is the MJPEG stream (an OBS browser source or an <img> shows it as it is).
		const ac = new AbortController();
		suite.onCleanup(async () => ac.abort());
		const res = await fetch(raw, { signal: ac.signal });
		assert.equal(res.status, 200);
		assert.match(res.headers.get('content-type'), /^multipart\/x-mixed-replace/);
		assert.equal(await readParts(res, 1), 1, 'a frame on the raw link');
		ac.abort();

		// A second screen: another browser context (no camera, no session of its own) opens the link.
		const viewer = await suite.newPage(suite.browser, { viewport: { width: 960, height: 600 } });
		await viewer.goto(link);
		const size = await shownSize(viewer, '[data-testid=viewer-image]', 'a frame in the viewer');
		assert.deepEqual(size, [props.width.default, props.height.default]);
		// Full window, letterboxed (not cropped) in the 960x600 window.
		const box = await viewer.locator('[data-testid=viewer-image]').boundingBox();
		assert.deepEqual([box.x, box.y, box.width, box.height], [0, 0, 960, 600]);
		assert.equal(await viewer.evaluate(() => getComputedStyle(document.querySelector('[data-testid=viewer-image]')).objectFit), 'contain');
		await waitForDifferentOutputs(viewer, 2, '[data-testid=viewer-image]');
		// Read-only, and the owner keeps its own stream.
		assert.equal(await viewer.evaluate(() => window.__sockets.length), 0, 'a viewer opens no websocket');
		await waitForMoreFrames(page);
		assert.equal(await streamEndedNote(page).count(), 0, "the owner's stream goes on");
		assert.equal(await viewer.evaluate(() => getComputedStyle(document.querySelector('[data-testid=viewer]')).backgroundColor), 'rgb(0, 0, 0)');
		await viewer.screenshot({ path: artifact('11-viewer.png') });

		// Stop: the link dies with the session, and both pages say so.
		await stopSession(page);
		const viewerMessage = () => viewer.locator('[data-testid=viewer-message]').innerText().catch(() => '');
		await waitFor(async () => /Stream ended/.test(await viewerMessage()), { what: 'the viewer to say the stream ended' });
		assert.equal(await viewer.locator('[data-testid=viewer-image]').count(), 0, 'no stale frame in the viewer');
		await viewer.screenshot({ path: artifact('12-viewer-ended.png') });
		assert.equal(await panel.getAttribute('data-ended'), 'true');
		assert.match(await panel.innerText(), /stopped working when the session ended/);
		assert.equal(await page.locator('[data-testid=copy-viewer-link]').count(), 0);
		assert.equal((await fetch(raw)).status, 404);
		// A dead link opened later says so at once.
		await viewer.reload();
		await waitFor(async () => /Stream ended/.test(await viewerMessage()), { what: 'a dead link to say so' });
		// A new session gets a new link.
		await startButton(page).click();
		await waitForState(page, 'live');
		assert.equal(await panel.count(), 0, 'the old link is gone');
		await share.click();
		await panel.waitFor();
		assert.notEqual(await page.locator('[data-testid=viewer-link]').inputValue(), link);
		await page.getByRole('button', { name: 'Close the viewer link' }).click();
		await panel.waitFor({ state: 'detached' });
	});

	it('a second user beyond --max-users gets "Server is full" and releases the camera', async () => {
		const page = await livePage();
		await startSession(page);
		const other = await livePage();
		await startButton(other).click();
		await waitForNotice(other, /Server is full/);
		assert.match(await noticeText(other), /one user at a time/);
		await waitForIdle(other);
		await waitFor(() => tracksEnded(other), { what: 'the second camera released' });
		await other.screenshot({ path: artifact('06-server-full.png') });
		// The first user was not disturbed.
		await waitForMoreFrames(page);
		assert.equal(await debug(page, 'state()'), 'live');
	});

	it('shows "Session timed out" when the server ends an idle session', async () => {
		const page = await mjpegPage();
		// The page's messages never reach the server (a frozen client): it ends the session as idle.
		await page.routeWebSocket(/\/api\/ws\//, (ws) => {
			const upstream = ws.connectToServer();
			ws.onMessage(() => {});
			upstream.onMessage((m) => ws.send(m));
		});
		const t0 = Date.now();
		await startButton(page).click();
		await waitForNotice(page, /Session timed out/, (IDLE_TIMEOUT_S + 30) * 1000);
		assert.ok(Date.now() - t0 >= (IDLE_TIMEOUT_S - 1) * 1000, 'not before the idle timeout');
		await waitForIdle(page);
		// The server's message, said once.
		const text = await noticeText(page);
		assert.match(text, new RegExp(`Session timed out\\b.*\\b${IDLE_TIMEOUT_S} s`));
		assert.equal(text.match(/timed out/gi).length, 1, `said once: ${text}`);
		assert.match(text, /Press Start/);
		assert.ok(await tracksEnded(page));
	});

	it('gives up after the connect timeout when the server never answers', async () => {
		const page = await livePage();
		// A websocket that opens but never says anything.
		await page.routeWebSocket(/\/api\/ws\//, () => {});
		const t0 = Date.now();
		await startButton(page).click();
		await waitForNotice(page, /Server unreachable/, 20_000);
		assert.ok(Date.now() - t0 >= 4000, 'waited for the connect timeout');
		await waitForIdle(page);
		assert.match(await noticeText(page), /within 5 s/);
		assert.ok(await tracksEnded(page), 'camera released');
	});

	it('uses a local image file as the source', async () => {
		const page = await mjpegPage();
		await page.locator('input[type=file]').setInputFiles(bmp);
		// The name shows at once, the size once the image has been decoded.
		await waitFor(async () => /input\.bmp.*200×150/s.test(await page.locator('[data-testid=source-summary]').innerText()), {
			what: 'file chosen, its size shown'
		});
		await startSession(page, 2);
		assert.equal(await debug(page, 'tracks().length'), 0, 'no camera opened for a file');
		const sent = await page.evaluate(async () => {
			const bmp = await createImageBitmap(new Blob([window.__lastFrame], { type: 'image/jpeg' }));
			return [bmp.width, bmp.height];
		});
		assert.deepEqual(sent, [props.width.default, props.height.default]);
		await stopSession(page);
	});

	it('shares a screen as the source', async () => {
		const page = await livePage();
		await page.getByRole('button', { name: 'Screen', exact: true }).click();
		await startSession(page, 2);
		assert.match(await page.locator('[data-testid=source-summary]').innerText(), /screen/i);
		await stopSession(page);
		assert.ok(await tracksEnded(page));
	});

	it('stacks input and output on a phone', async () => {
		const page = await mjpegPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
		await startSession(page, 2);
		const [a, b] = await Promise.all([
			page.locator('[data-testid=input-pane]').boundingBox(),
			page.locator('[data-testid=output-pane]').boundingBox()
		]);
		assert.ok(b.y >= a.y + a.height, 'output below input');
		assert.ok(a.width > 300, 'full width panes');
		await waitFor(async () => /\d+ ms/.test(await page.locator('[data-testid=latency]').innerText()), { what: 'latency' });
		await page.evaluate(() => window.scrollTo(0, 0));
		await page.screenshot({ path: artifact('03-live-phone.png') });
		await page.screenshot({ path: artifact('03-live-phone-full.png'), fullPage: true });
	});

	it('shows "Camera permission denied" when the camera is refused', async () => {
		const p = await suite.newPage(await suite.extraBrowser({ clip, fakeUi: false }));
		await open(p, server.url);
		await startButton(p).click();
		await waitForNotice(p, /Camera permission denied/);
		await waitForIdle(p);
		assert.equal(await p.evaluate(() => window.__sockets.length), 0, 'no session without a source');
		await p.screenshot({ path: artifact('07-camera-denied.png') });
	});

	it('shows "No camera found" without a camera', async () => {
		const p = await suite.newPage(await suite.extraBrowser({ fakeCamera: false }));
		await open(p, server.url);
		await startButton(p).click();
		await waitForNotice(p, /No camera found/);
		await waitForIdle(p);
		assert.equal(await p.evaluate(() => window.__sockets.length), 0, 'no session without a source');
	});

	it('explains HTTPS on an insecure origin, and a file still works there', async () => {
		// A LAN name for the server (like http://192.168.1.20:7860 on a phone): not a secure origin.
		const lan = await suite.extraBrowser({ clip, extra: ['--host-resolver-rules=MAP live-diffusion.test 127.0.0.1'] });
		const p = await suite.newPage(lan);
		await open(p, `http://live-diffusion.test:${server.port}/`);
		await waitForNotice(p, /not on a secure origin/);
		assert.match(await p.locator('[data-testid=midi-unavailable]').innerText(), /Web MIDI is not available/, 'no Web MIDI off a secure origin, and the page says so');
		assert.match(await noticeText(p), /--self-signed/);
		assert.match(await noticeText(p), /--ssl-certfile/);
		await startButton(p).click();
		await waitForIdle(p);
		assert.match(await noticeText(p), /secure origin/);
		await p.screenshot({ path: artifact('08-insecure-origin.png') });
		// A file works without HTTPS (and the page makes its user id without crypto.randomUUID).
		await p.locator('input[type=file]').setInputFiles(bmp);
		await startSession(p, 2);
		await stopSession(p);
	});

	it('shows "Server unreachable" when the server is gone, and Start stays usable', async () => {
		// The page comes from an address where nothing listens, its files and settings fetched from
		// the real server by the test; then the test stops answering: the server is "gone" (its
		// websocket is refused), and the real one keeps running for the other tests.
		const gone = `http://127.0.0.1:${await freePort()}`;
		const page = await suite.newPage();
		let serverGone = false;
		await page.route(`${gone}/**`, async (route) => {
			const { pathname, search } = new URL(route.request().url());
			// The page's own files stay reachable once the server is gone: on a slow machine it may
			// still be loading a module of the app, which is not what this test is about.
			if (serverGone && !pathname.startsWith('/_app/')) return route.abort('connectionrefused');
			const headers = { ...route.request().headers() };
			delete headers.origin; // not what this test is about
			await route.fulfill({ response: await route.fetch({ url: server.url + pathname + search, headers }) });
		});
		await open(page, `${gone}/`);
		serverGone = true;
		await startButton(page).click();
		await waitForNotice(page, /Server unreachable/, 20_000);
		await waitForIdle(page);
		await waitFor(() => tracksEnded(page), { what: 'camera released' });
		assert.equal(await page.locator('[data-testid=connection-state]').innerText(), 'Unreachable');
		await page.screenshot({ path: artifact('09-server-unreachable.png') });
		// Pressing Start again fails the same way instead of hanging.
		await startButton(page).click();
		await waitForNotice(page, /Server unreachable/, 20_000);
		await waitForIdle(page);
	});
});

describe('a text-input pipeline (txt2img) against the real server', { timeout: 600_000 }, () => {
	const suite = new LiveSuite([], 'txt2img'); // --max-users: the default
	const textServer = suite.server;

	it('streams without a camera and sends prompt edits debounced', async () => {
		const page = await suite.livePage();
		assert.equal(await page.locator('[data-testid=input-pane]').count(), 0, 'no input pane');
		assert.match(await page.locator('.controls').innerText(), /applied as you type/);
		await startSession(page, 1);
		assert.deepEqual(await shownSize(page), [512, 512]);
		assert.equal(await debug(page, 'tracks().length'), 0, 'no camera for a text pipeline');
		assert.equal(await page.evaluate(() => window.__binarySends), 0, 'no image frames sent');
		// The default --max-users is 8.
		await waitForUsers(page, '1/8');

		// The server generates a text pipeline's frame only when the parameters change.
		const mark = textServer.mark();
		const shown = await debug(page, 'framesShown()');
		const word = randomTag('lighthouse');
		await page.locator('#param-prompt').fill('');
		await page.locator('#param-prompt').pressSequentially(word, { delay: 25 });
		const changed = new RegExp(`params changed: .*prompt='${word}'`);
		await waitFor(async () => changed.test(textServer.log.slice(mark)) || /Server error/.test(await noticeText(page)), {
			timeout: FRAME_TIMEOUT,
			what: 'the new prompt on the server (or a server error)'
		});
		assert.doesNotMatch(await noticeText(page), /Server error/);
		const changes = textServer.log.slice(mark).split('\n').filter((l) => /params changed: .*prompt=/.test(l));
		assert.ok(changes.length < word.length / 2, `debounced: ${changes.length} prompt changes for ${word.length} keystrokes`);
		// A new picture for the new prompt.
		await waitForFrames(page, shown + 1);
		await waitFor(async () => /\d+ ms/.test(await page.locator('[data-testid=latency]').innerText()), { what: 'latency' });
		await page.screenshot({ path: artifact('04-text-pipeline.png') });
		await stopSession(page);
	});
});

describe('a ControlNet stack (a set-up) against the real server', { timeout: 600_000 }, () => {
	// The anchor's controlnetHyperSD with a depth ControlNet stacked on its canny one.
	const suite = new LiveSuite(['--controlnet', 'depth,canny'], 'controlnetHyperSD');
	const stackServer = suite.server;

	it('shows a scale per ControlNet, sends each, and shows the control image when asked', async () => {
		// Over MJPEG: the server logs the parameter changes that come with frames.
		const page = await suite.livePage(undefined, '?transport=mjpeg');
		for (const [name, title] of [['depth_scale', /Depth scale/], ['canny_scale', /Canny edges scale/]]) {
			const field = page.locator(`[data-param=${name}]`);
			assert.ok(await field.isVisible(), `a visible ${name} slider`);
			assert.match(await field.textContent(), title);
		}
		await startSession(page, 2);
		let mark = stackServer.mark();
		await setNumber(page, 'depth_scale', '1.37');
		await stackServer.waitForLog(/params changed: .*depth_scale='1\.37'/, { from: mark });
		mark = stackServer.mark();
		await setNumber(page, 'canny_scale', '0.21');
		await stackServer.waitForLog(/params changed: .*canny_scale='0\.21'/, { from: mark });
		// "Show the control image" (under Advanced) insets the first ControlNet's image, the depth map.
		await page.locator('summary', { hasText: 'Advanced' }).click();
		mark = stackServer.mark();
		await page.locator('[data-param=debug_control] input[type=checkbox]').check();
		await stackServer.waitForLog(/params changed: .*debug_control='?True/, { from: mark });
		const shown = await debug(page, 'framesShown()');
		await waitForFrames(page, shown + 2);
		await page.screenshot({ path: artifact('05-controlnet-stack.png') });
		await stopSession(page);
	});
});

describe('an image prompt (an IP-Adapter set-up) against the real server', { timeout: 600_000 }, () => {
	const suite = new LiveSuite([], 'IPcompositionHyperSD15');
	const ipServer = suite.server;

	it('sends a dropped picture once, an output on request, clears it, and sends it again on the next start', async () => {
		const page = await suite.livePage();
		const panel = page.locator('[data-testid=image-prompt]');
		assert.ok(await panel.isVisible(), 'the image prompt panel');
		assert.match(await panel.innerText(), /the camera frame is used/);
		await startSession(page, 2);
		// A picture file, as a person would choose one (a PNG: the page re-encodes it as a JPEG).
		const picture = await page.locator('[data-testid=pipeline-title]').screenshot();
		let mark = ipServer.mark();
		await page.locator('[data-testid=image-prompt-file]').setInputFiles({ name: 'prompt.png', mimeType: 'image/png', buffer: picture });
		await ipServer.waitForLog(/image prompt set \(\d+ bytes\)/, { from: mark });
		assert.ok(await page.locator('[data-testid=image-prompt-preview]').isVisible(), 'a preview of it');
		const shown = await debug(page, 'framesShown()');
		await waitForFrames(page, shown + 2);
		assert.equal(ipServer.log.slice(mark).match(/image prompt set/g).length, 1, 'sent once, not with every frame');

		mark = ipServer.mark();
		await page.getByRole('button', { name: 'Use this output' }).click();
		await ipServer.waitForLog(/image prompt set/, { from: mark });

		mark = ipServer.mark();
		await page.getByRole('button', { name: 'Clear' }).click();
		await ipServer.waitForLog(/image prompt cleared/, { from: mark });
		assert.match(await panel.innerText(), /the camera frame is used/);

		// A picture chosen while stopped goes out when the next session starts.
		await stopSession(page);
		await page.locator('[data-testid=image-prompt-file]').setInputFiles({ name: 'prompt.png', mimeType: 'image/png', buffer: picture });
		mark = ipServer.mark();
		await startSession(page, 1);
		await ipServer.waitForLog(/image prompt set/, { from: mark });
		await page.screenshot({ path: artifact('06-image-prompt.png') });
		await stopSession(page);
	});
});
