// End-to-end: the built page in Debian's headless Chromium (fake camera fed from a y4m clip made
// here) against the real server with miniature models. Run with `npm run e2e` from frontend/.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
	INIT_SCRIPT,
	ServerProcess,
	artifact,
	launchChromium,
	waitFor,
	writeBmp,
	writeY4m
} from './harness.mjs';

const FRAME_TIMEOUT = 90_000; // first frames on a slow 2-core machine
// Set to false once the server accepts consecutive text-pipeline frames (see the test).
const IDLE_TIMEOUT_S = 10;

const tmp = mkdtempSync(path.join(tmpdir(), 'ld-e2e-'));
const clip = writeY4m(path.join(tmp, 'clip.y4m'));
const bmp = writeBmp(path.join(tmp, 'input.bmp'));
const server = new ServerProcess(['--max-users', '1', '--idle-timeout', String(IDLE_TIMEOUT_S)]);
let browser;
let settings;
let props;

// ------------------------------------------------------------------ page helpers
async function newPage(b = browser, options = {}) {
	const context = await b.newContext({ viewport: { width: 1440, height: 900 }, acceptDownloads: true, ...options });
	await context.addInitScript(INIT_SCRIPT + RECORDER);
	const page = await context.newPage();
	page.on('pageerror', (e) => console.error('[pageerror]', e));
	return page;
}

// Counts the send_frame requests the page got and the binary frames it sent, keeps the last one.
const RECORDER = `
(() => {
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

async function open(page, url = server.url) {
	await page.goto(url);
	await page.waitForSelector('[data-param]', { timeout: 30_000 });
}

const debug = (page, expr) => page.evaluate(`window.__liveDiffusion.${expr}`);
const startButton = (page) => page.locator('[data-testid=start]');

async function startButtonText(page) {
	return (await startButton(page).innerText()).replace(/\s+/g, ' ').trim();
}

async function waitForState(page, state, timeout = 30_000) {
	await waitFor(async () => (await debug(page, 'state()')) === state, { timeout, what: `state ${state}` });
}

async function waitForFrames(page, n, timeout = FRAME_TIMEOUT) {
	await waitFor(async () => (await debug(page, 'framesShown()')) >= n, { timeout, what: `${n} output frames` });
}

async function noticeText(page) {
	const n = page.locator('[data-testid=notice]');
	return (await n.count()) ? (await n.innerText()).replace(/\s+/g, ' ') : '';
}

async function waitForNotice(page, re, timeout = 30_000) {
	return waitFor(async () => re.test(await noticeText(page)), { timeout, what: `a notice matching ${re}` });
}

/** Start, and wait until the button offers Stop again (not stuck) once the session ends. */
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

/** A small hash of the output image's pixels; null while there is none. */
function outputHash(page, selector = '[data-testid=output-image]') {
	return page.evaluate((selector) => {
		const img = document.querySelector(selector);
		if (!img || !img.complete || !img.naturalWidth) return null;
		const c = document.createElement('canvas');
		c.width = 64;
		c.height = 64;
		const x = c.getContext('2d');
		x.drawImage(img, 0, 0, 64, 64);
		const d = x.getImageData(0, 0, 64, 64).data;
		let h = 0;
		for (let i = 0; i < d.length; i += 3) h = (h * 31 + d[i]) >>> 0;
		return h;
	}, selector);
}

async function stopSession(page) {
	if ((await debug(page, 'state()')) !== 'idle') await startButton(page).click();
	await waitForIdle(page);
}

// ------------------------------------------------------------------ suite
describe('live page against the real server', { timeout: 900_000 }, () => {
	before(async () => {
		await server.start();
		browser = await launchChromium({ clip });
		const res = await fetch(`${server.url}/api/settings`);
		settings = await res.json();
		props = settings.input_params.properties;
	}, { timeout: 300_000 });

	after(async () => {
		await browser?.close().catch(() => {});
		await server.stop();
		rmSync(tmp, { recursive: true, force: true });
	});

	let page;

	it('loads with controls built from /api/settings', async () => {
		page = await newPage();
		await open(page);
		const title = settings.info.properties.title.default;
		assert.equal(await page.locator('[data-testid=pipeline-title]').innerText(), title);
		for (const [name, p] of Object.entries(props)) {
			const field = page.locator(`[data-param="${p.id ?? name}"]`);
			assert.equal(await field.count(), 1, `a widget for ${name}`);
			assert.equal(await field.isVisible(), !p.hide, `${name} visible unless hidden`);
			if (p.title) assert.match(await field.textContent(), new RegExp(p.title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
		}
		assert.equal(await page.locator('#param-prompt').inputValue(), props.prompt.default);
		assert.equal(await page.locator('#param-strength').getAttribute('type'), 'range');
		assert.equal(Number(await page.locator('#param-strength').inputValue()), props.strength.default);
		await page.locator('summary', { hasText: 'Advanced' }).click();
		assert.ok(await page.locator('[data-param=width]').isVisible(), 'hidden fields appear under Advanced');
		assert.ok(await page.locator('[data-param=seed] button[aria-label="Random seed"]').isVisible());
		// The pipeline's page content, and the user limit (--max-users 1).
		assert.match(await page.locator('.page-content').innerText(), /Strength/);
		await waitFor(async () => /1\s*\/\s*1|0\s*\/\s*1/.test(await page.locator('[data-testid=users]').innerText()), { what: 'users count' });
		assert.match(await startButtonText(page), /^Start/);
		await page.locator('summary', { hasText: 'Advanced' }).click();
		await page.screenshot({ path: artifact('01-idle-desktop.png') });
	});

	it('Start produces output frames of the pipeline size that change over time', async () => {
		await startButton(page).click();
		await waitForState(page, 'live');
		await waitForFrames(page, 3);
		const width = props.width.default;
		const height = props.height.default;
		const size = await page.evaluate(() => {
			const img = document.querySelector('[data-testid=output-image]');
			return [img.naturalWidth, img.naturalHeight];
		});
		assert.deepEqual(size, [width, height]);
		// Different pictures keep coming (the fake camera shows a moving square).
		const seen = new Set();
		await waitFor(async () => {
			const h = await outputHash(page);
			if (h !== null) seen.add(h);
			return seen.size >= 3;
		}, { timeout: FRAME_TIMEOUT, interval: 150, what: '3 different output frames' });
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
		await waitForFrames(page, (await debug(page, 'framesShown()')) + 2);
		await page.screenshot({ path: artifact('02-live-desktop.png') });
	});

	it('a prompt or slider change reaches the server with the next frame', async () => {
		const tag = `e2e prompt ${Math.random().toString(36).slice(2, 8)}`;
		let mark = server.mark();
		await page.locator('#param-prompt').fill(tag);
		await server.waitForLog(new RegExp(`params changed: .*prompt='${tag}'`), { from: mark });

		mark = server.mark();
		const box = page.locator('[data-param=strength] input.num');
		await box.fill('0.73');
		await box.press('Enter');
		await server.waitForLog(/params changed: .*strength='0\.73'/, { from: mark });
		assert.equal(await page.locator('#param-strength').inputValue(), '0.73');

		// The slider itself, moved with the keyboard like a person would.
		mark = server.mark();
		await page.locator('#param-strength').focus();
		await page.keyboard.press('ArrowRight');
		await server.waitForLog(/params changed: .*strength='0\.74'/, { from: mark });

		// A random seed goes out too.
		mark = server.mark();
		await page.locator('[data-param=seed] button[aria-label="Random seed"]').click();
		await server.waitForLog(/params changed: .*seed=/, { from: mark });
	});

	it('switching the camera resolution releases the old camera and keeps streaming', async () => {
		const before = await debug(page, 'tracks()');
		assert.equal(before.filter((t) => t.readyState === 'live').length, 1);
		await page.locator('#resolution-select').selectOption('640x480');
		await waitFor(async () => {
			const t = await debug(page, 'tracks()');
			return t.length === before.length + 1 && t.filter((x) => x.readyState === 'live').length === 1 && t.at(-1).readyState === 'live';
		}, { what: 'one new live track, the old one ended' });
		const n = await debug(page, 'framesShown()');
		await waitForFrames(page, n + 2);
		await page.locator('#resolution-select').selectOption('');
	});

	it('notices when another viewer takes the output stream, and takes it back', async () => {
		const id = await debug(page, 'userId()');
		const ac = new AbortController();
		const res = await fetch(`${server.url}/api/stream/${id}`, { signal: ac.signal });
		assert.equal(res.status, 200);
		const reader = res.body.getReader();
		await reader.read();
		try {
			await page.locator('text=opened somewhere else').waitFor({ timeout: 30_000 });
		} finally {
			ac.abort();
			await reader.cancel().catch(() => {});
		}
		await page.getByRole('button', { name: 'Show it here again' }).click();
		const n = await debug(page, 'framesShown()');
		await waitForFrames(page, n + 2);
		assert.equal(await page.locator('text=opened somewhere else').count(), 0);
	});

	it('shows a server error and keeps the session going', async () => {
		await stopSession(page);
		// Rewrite the parameters on the wire to an out-of-range value, as a broken client would.
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
		assert.equal(await debug(page, 'state()'), 'live');
		await waitForFrames(page, 2);
		await stopSession(page);
		await page.unrouteAll({ behavior: 'ignoreErrors' });
		await startButton(page).click();
		await waitForFrames(page, 1);
	});

	it('Stop ends the camera tracks and closes the socket', async () => {
		const mark = server.mark();
		await startButton(page).click();
		await waitForIdle(page);
		await waitFor(() => tracksEnded(page), { what: 'camera tracks ended' });
		// Closing right away, closed once the server answered the close.
		assert.ok([2, 3].includes(await debug(page, 'socketState()')));
		await waitFor(async () => (await debug(page, 'socketState()')) === 3, { what: 'socket closed' });
		assert.ok(await page.evaluate(() => window.__sockets.every((s) => s.readyState === WebSocket.CLOSED)));
		await server.waitForLog(/session \w+: closed after/, { from: mark });
		// No stale output frame stays on screen.
		assert.equal(await page.locator('[data-testid=output-image]').count(), 0);
		const video = await page.evaluate(() => document.querySelector('[data-testid=input-video]').srcObject);
		assert.equal(video, null);
	});

	it('keeps parameter values across a reload', async () => {
		const prompt = await page.locator('#param-prompt').inputValue();
		await page.reload();
		await page.waitForSelector('[data-param]');
		await waitFor(async () => (await page.locator('#param-prompt').inputValue()) === prompt, { what: 'stored prompt' });
		assert.equal(await page.locator('#param-strength').inputValue(), '0.74');
	});

	it('space starts and stops, F toggles fullscreen', async () => {
		await page.locator('header h1').click(); // focus outside any field
		await page.keyboard.press('Space');
		await waitForState(page, 'live');
		await waitForFrames(page, 1);
		await page.keyboard.press('f');
		await waitFor(() => page.evaluate(() => document.fullscreenElement?.dataset.testid === 'output-pane'), { what: 'fullscreen output' });
		await page.keyboard.press('f');
		await waitFor(() => page.evaluate(() => document.fullscreenElement === null), { what: 'fullscreen exit' });
		// Space typed into the prompt is text, not a toggle.
		await page.locator('#param-prompt').focus();
		await page.keyboard.press('End');
		await page.keyboard.press('Space');
		assert.equal(await debug(page, 'state()'), 'live');
		await page.locator('header h1').click();
		await page.keyboard.press('Space');
		await waitForIdle(page);
		assert.ok(await tracksEnded(page));
	});

	it('snapshot downloads the output with prompt, seed and parameters embedded', async () => {
		await startButton(page).click();
		await waitForFrames(page, 2);
		const [download] = await Promise.all([page.waitForEvent('download'), page.locator('[data-testid=snapshot]').click()]);
		const name = download.suggestedFilename();
		const seed = Number(await page.locator('[data-param=seed] input.num').inputValue());
		assert.match(name, new RegExp(`^live-diffusion_img2img_seed${seed}_\\d{8}-\\d{6}\\.jpg$`));
		const bytes = readFileSync(await download.path());
		assert.deepEqual([...bytes.subarray(0, 2)], [0xff, 0xd8]);
		const text = bytes.toString('latin1');
		assert.ok(text.includes('Exif\0\0'), 'EXIF segment');
		const prompt = await page.locator('#param-prompt').inputValue();
		const comment = bytes.toString('utf8');
		assert.ok(comment.includes(JSON.stringify(prompt).slice(1, -1)), 'prompt embedded');
		assert.ok(comment.includes(`"seed":${seed}`), 'seed embedded');
		assert.ok(comment.includes('"strength":0.74'), 'parameters embedded');
	});

	it('the pop-out window shows the same output frames', async () => {
		const [popout] = await Promise.all([page.context().waitForEvent('page'), page.getByRole('button', { name: 'Pop out' }).click()]);
		await popout.waitForLoadState();
		await waitFor(
			() => popout.evaluate(() => {
				const img = document.querySelector('img');
				return !!img && img.naturalWidth > 0;
			}),
			{ timeout: FRAME_TIMEOUT, what: 'a frame in the pop-out' }
		);
		const size = await popout.evaluate(() => [document.querySelector('img').naturalWidth, document.querySelector('img').naturalHeight]);
		assert.deepEqual(size, [props.width.default, props.height.default]);
		// The main page keeps its own output.
		const before = await debug(page, 'framesShown()');
		await waitForFrames(page, before + 2);
		await popout.screenshot({ path: artifact('05-popout.png') });
		await stopSession(page);
		await waitFor(async () => /Stopped/.test(await popout.locator('body').innerText()), { what: 'pop-out cleared on stop' });
		assert.equal(await popout.locator('img').count(), 0);
		await popout.close();
	});

	it('Share view gives a read-only viewer link that shows the frames and ends with the session', async () => {
		const share = page.locator('[data-testid=share-view]');
		assert.ok(await share.isDisabled(), 'Share view needs a live session');
		// For the Copy button. Granting replaces the context's permissions: keep the camera's, or
		// its track ends (and the session with it).
		await page.context().grantPermissions(['camera', 'clipboard-read', 'clipboard-write'], { origin: server.url });
		await startButton(page).click();
		await waitForFrames(page, 2);
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
		const res = await fetch(raw, { signal: ac.signal });
		assert.equal(res.status, 200);
		assert.match(res.headers.get('content-type'), /^multipart\/x-mixed-replace/);
		const reader = res.body.getReader();
		assert.match(Buffer.from((await reader.read()).value).toString('latin1'), /^--frame/);
		ac.abort();
		await reader.cancel().catch(() => {});

		// A second screen: another browser (no camera, no session of its own) opens the link.
		const viewer = await newPage(browser, { viewport: { width: 960, height: 600 } });
		await viewer.goto(link);
		await waitFor(
			() => viewer.evaluate(() => {
				const img = document.querySelector('[data-testid=viewer-image]');
				return !!img && img.complete && img.naturalWidth > 0;
			}),
			{ timeout: FRAME_TIMEOUT, what: 'a frame in the viewer' }
		);
		const size = await viewer.evaluate(() => {
			const img = document.querySelector('[data-testid=viewer-image]');
			return [img.naturalWidth, img.naturalHeight];
		});
		assert.deepEqual(size, [props.width.default, props.height.default]);
		// Full window, letterboxed (not cropped) in the 960x600 window.
		const box = await viewer.locator('[data-testid=viewer-image]').boundingBox();
		assert.deepEqual([box.x, box.y, box.width, box.height], [0, 0, 960, 600]);
		assert.equal(await viewer.evaluate(() => getComputedStyle(document.querySelector('[data-testid=viewer-image]')).objectFit), 'contain');
		const seen = new Set();
		await waitFor(async () => {
			const h = await outputHash(viewer, '[data-testid=viewer-image]');
			if (h !== null) seen.add(h);
			return seen.size >= 2;
		}, { timeout: FRAME_TIMEOUT, interval: 150, what: 'new frames in the viewer' });
		// Read-only, and the owner keeps its own stream.
		assert.equal(await viewer.evaluate(() => window.__sockets.length), 0, 'a viewer opens no websocket');
		await waitForFrames(page, (await debug(page, 'framesShown()')) + 2);
		assert.equal(await page.locator('text=opened somewhere else').count(), 0, "the viewer did not take the owner's stream");
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
		await viewer.context().close();
		// A new session gets a new link.
		await startButton(page).click();
		await waitForState(page, 'live');
		assert.equal(await panel.count(), 0, 'the old link is gone');
		await share.click();
		await panel.waitFor();
		assert.notEqual(await page.locator('[data-testid=viewer-link]').inputValue(), link);
		await page.getByRole('button', { name: 'Close the viewer link' }).click();
		await stopSession(page);
	});

	it('a second user beyond --max-users gets "Server is full" and releases the camera', async () => {
		await startButton(page).click();
		await waitForFrames(page, 1);
		const other = await newPage();
		await open(other);
		await startButton(other).click();
		await waitForNotice(other, /Server is full/);
		await waitForIdle(other);
		await waitFor(() => tracksEnded(other), { what: 'the second camera released' });
		await other.screenshot({ path: artifact('06-server-full.png') });
		await other.context().close();
		// The first user was not disturbed.
		const n = await debug(page, 'framesShown()');
		await waitForFrames(page, n + 2);
		await stopSession(page);
	});

	it('shows "Session timed out" when the server ends an idle session', async () => {
		// Without the output stream the server never asks for frames, so the session goes idle.
		await page.route('**/api/stream/**', (route) => route.abort());
		await startButton(page).click();
		await waitForNotice(page, /Session timed out/, (IDLE_TIMEOUT_S + 30) * 1000);
		await waitForIdle(page);
		// The server's message, said once.
		const text = await noticeText(page);
		assert.match(text, new RegExp(`Session timed out: no message for ${IDLE_TIMEOUT_S} s`));
		assert.equal(text.match(/timed out/gi).length, 1, `said once: ${text}`);
		assert.ok(await tracksEnded(page));
		await page.unroute('**/api/stream/**');
	});

	it('gives up after the connect timeout when the server never answers', async () => {
		// A websocket that opens but never says anything.
		await page.routeWebSocket(/\/api\/ws\//, () => {});
		const t0 = Date.now();
		await startButton(page).click();
		await waitForNotice(page, /Server unreachable/, 20_000);
		assert.ok(Date.now() - t0 >= 4000, 'waited for the connect timeout');
		await waitForIdle(page);
		assert.match(await noticeText(page), /within 5 s/);
		await page.context().close();
	});

	it('uses a local image file as the source', async () => {
		page = await newPage();
		await open(page);
		await page.locator('input[type=file]').setInputFiles(bmp);
		await waitFor(async () => /input\.bmp/.test(await page.locator('[data-testid=source-summary]').innerText()), { what: 'file chosen' });
		await startButton(page).click();
		await waitForFrames(page, 2);
		assert.equal(await debug(page, 'tracks().length'), 0, 'no camera opened for a file');
		await stopSession(page);
	});

	it('shares a screen as the source', async () => {
		await page.getByRole('button', { name: 'Screen', exact: true }).click();
		await startButton(page).click();
		await waitForFrames(page, 2);
		assert.match(await page.locator('[data-testid=source-summary]').innerText(), /screen/i);
		await stopSession(page);
		assert.ok(await tracksEnded(page));
		await page.context().close();
	});

	it('stacks input and output on a phone', async () => {
		page = await newPage(browser, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
		await open(page);
		await startButton(page).click();
		await waitForFrames(page, 2);
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
		await stopSession(page);
		await page.context().close();
	});

	it('shows "Camera permission denied" when the camera is refused', async () => {
		const denying = await launchChromium({ clip, fakeUi: false });
		try {
			const p = await newPage(denying);
			await open(p);
			await startButton(p).click();
			await waitForNotice(p, /Camera permission denied/);
			await waitForIdle(p);
			assert.equal(await p.evaluate(() => window.__sockets.length), 0, 'no session without a source');
			await p.screenshot({ path: artifact('07-camera-denied.png') });
		} finally {
			await denying.close();
		}
	});

	it('shows "No camera found" without a camera', async () => {
		const bare = await launchChromium({ fakeCamera: false });
		try {
			const p = await newPage(bare);
			await open(p);
			await startButton(p).click();
			await waitForNotice(p, /No camera found/);
			await waitForIdle(p);
			assert.equal(await p.evaluate(() => window.__sockets.length), 0, 'no session without a source');
		} finally {
			await bare.close();
		}
	});

	it('explains HTTPS on an insecure origin', async () => {
		const lan = await launchChromium({ clip, extra: ['--host-resolver-rules=MAP live-diffusion.test 127.0.0.1'] });
		try {
			const p = await newPage(lan);
			await open(p, `http://live-diffusion.test:${server.port}/`);
			await waitForNotice(p, /not on a secure origin/);
			assert.match(await noticeText(p), /--self-signed/);
			assert.match(await noticeText(p), /--ssl-certfile/);
			await startButton(p).click();
			await waitForIdle(p);
			assert.match(await noticeText(p), /secure origin/);
			await p.screenshot({ path: artifact('08-insecure-origin.png') });
			// A file works without HTTPS (and the page makes its user id without crypto.randomUUID).
			await p.locator('input[type=file]').setInputFiles(bmp);
			await startButton(p).click();
			await waitForFrames(p, 2);
			await stopSession(p);
		} finally {
			await lan.close();
		}
	});

	it('shows "Server unreachable" when the server is gone, and Start stays usable', async () => {
		page = await newPage();
		await open(page);
		await server.stop();
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
		await page.context().close();
	});
});

describe('a text-input pipeline (txt2img) against the real server', { timeout: 600_000 }, () => {
	const textServer = new ServerProcess([], 'txt2img');
	let b;

	before(async () => {
		await textServer.start();
		b = await launchChromium({ clip });
	}, { timeout: 300_000 });

	after(async () => {
		await b?.close().catch(() => {});
		await textServer.stop();
	});

	it('streams without a camera and sends prompt edits debounced', async () => {
		const page = await newPage(b);
		await open(page, textServer.url);
		assert.equal(await page.locator('[data-testid=input-pane]').count(), 0, 'no input pane');
		assert.match(await page.locator('.controls').innerText(), /applied as you type/);
		await startButton(page).click();
		await waitForFrames(page, 1);
		const size = await page.evaluate(() => {
			const img = document.querySelector('[data-testid=output-image]');
			return [img.naturalWidth, img.naturalHeight];
		});
		assert.deepEqual(size, [512, 512]);
		assert.equal(await debug(page, 'tracks().length'), 0, 'no camera for a text pipeline');
		assert.equal(await page.evaluate(() => window.__binarySends), 0, 'no image frames sent');

		// The server generates a text pipeline's frame only when the parameters change.
		const mark = textServer.mark();
		const word = `lighthouse ${Math.random().toString(36).slice(2, 8)}`;
		await page.locator('#param-prompt').fill('');
		await page.locator('#param-prompt').pressSequentially(word, { delay: 25 });
		// Fail fast, and say why, when the server refuses the protocol's second text frame.
		await waitFor(
			async () =>
				/Unknown parameter 'status'|with a 'status' key/.test(await noticeText(page)) ||
				new RegExp(`params changed: .*prompt='${word}'`).test(textServer.log.slice(mark)),
			{ timeout: FRAME_TIMEOUT, what: 'the new prompt on the server' }
		);
		assert.doesNotMatch(await noticeText(page), /Unknown parameter 'status'|with a 'status' key/, 'server bug: a text pipeline gets only its first frame');
		const changes = textServer.log.slice(mark).split('\n').filter((l) => /params changed: .*prompt=/.test(l));
		assert.ok(changes.length < word.length / 2, `debounced: ${changes.length} prompt changes for ${word.length} keystrokes`);
		await waitForFrames(page, 2);
		await waitFor(async () => /\d+ ms/.test(await page.locator('[data-testid=latency]').innerText()), { what: 'latency' });
		await page.screenshot({ path: artifact('04-text-pipeline.png') });
		await stopSession(page);
		await page.context().close();
	});
});
