// Helpers for the end-to-end tests: a y4m clip for Chromium's fake camera, a BMP image, a free
// port, the real server as a child process with its log, and Chromium via playwright-core.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const FRONTEND = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// LD_REPO: run against the server of another checkout (default: this one).
export const REPO = process.env.LD_REPO ? path.resolve(process.env.LD_REPO) : path.resolve(FRONTEND, '..');
export const ARTIFACTS = path.resolve(FRONTEND, '..', 'test-artifacts');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const PYTHON = process.env.LD_PYTHON || path.join(REPO, '.venv', 'bin', 'python');

/**
 * A YUV4MPEG2 clip (C420jpeg): a colour gradient with a bright square moving across it, so that
 * every frame differs. Chromium plays it as the camera, looping.
 */
export function writeY4m(file, { width = 320, height = 240, frames = 60, fps = 30 } = {}) {
	const header = Buffer.from(`YUV4MPEG2 W${width} H${height} F${fps}:1 Ip A1:1 C420jpeg\n`);
	const cw = width / 2;
	const ch = height / 2;
	const frameHeader = Buffer.from('FRAME\n');
	const parts = [header];
	for (let f = 0; f < frames; f++) {
		const y = Buffer.alloc(width * height);
		const u = Buffer.alloc(cw * ch);
		const v = Buffer.alloc(cw * ch);
		const sq = Math.round((f / frames) * (width - 80));
		for (let j = 0; j < height; j++) {
			for (let i = 0; i < width; i++) {
				const inSquare = i >= sq && i < sq + 80 && j >= 80 && j < 160;
				y[j * width + i] = inSquare ? 235 : 40 + Math.round((i / width) * 120 + (j / height) * 40);
			}
		}
		for (let j = 0; j < ch; j++) {
			for (let i = 0; i < cw; i++) {
				u[j * cw + i] = 90 + Math.round((i / cw) * 80);
				v[j * cw + i] = 170 - Math.round((j / ch) * 80);
			}
		}
		parts.push(frameHeader, y, u, v);
	}
	writeFileSync(file, Buffer.concat(parts));
	return file;
}

/** A 24-bit BMP with a diagonal gradient (an image the page can open as a file source). */
export function writeBmp(file, width = 200, height = 150) {
	const row = Math.ceil((width * 3) / 4) * 4;
	const size = 54 + row * height;
	const b = Buffer.alloc(size);
	b.write('BM', 0);
	b.writeUInt32LE(size, 2);
	b.writeUInt32LE(54, 10);
	b.writeUInt32LE(40, 14);
	b.writeInt32LE(width, 18);
	b.writeInt32LE(height, 22);
	b.writeUInt16LE(1, 26);
	b.writeUInt16LE(24, 28);
	b.writeUInt32LE(row * height, 34);
	for (let y = 0; y < height; y++) {
		for (let x = 0; x < width; x++) {
			const o = 54 + y * row + x * 3;
			b[o] = Math.round((x / width) * 255);
			b[o + 1] = Math.round((y / height) * 255);
			b[o + 2] = 128;
		}
	}
	writeFileSync(file, b);
	return file;
}

/** A port where nothing listens (at the moment it is asked). */
export function freePort() {
	return new Promise((resolve, reject) => {
		const srv = net.createServer();
		srv.unref();
		srv.on('error', reject);
		srv.listen(0, '127.0.0.1', () => {
			const { port } = srv.address();
			srv.close(() => resolve(port));
		});
	});
}

/** Resolves when `fn()` is truthy; polls; rejects with `what` after `timeout` ms. */
export async function waitFor(fn, { timeout = 30_000, interval = 100, what = 'condition' } = {}) {
	const end = Date.now() + timeout;
	let last;
	for (;;) {
		try {
			last = await fn();
			if (last) return last;
		} catch (e) {
			last = e;
		}
		if (Date.now() > end) throw new Error(`Timed out after ${timeout} ms waiting for ${what} (last: ${String(last)})`);
		await new Promise((r) => setTimeout(r, interval));
	}
}

/**
 * The real server (`server/main.py --tiny`) with its log kept in memory, on a free port that it picks
 * itself (`--port 0`) and says in its log: no other process can take it in between.
 */
export class ServerProcess {
	constructor(args = [], pipeline = 'img2img') {
		this.args = args;
		this.pipeline = pipeline;
		this.log = '';
		this.proc = null;
		this.port = 0;
		this.exited = null;
	}

	get url() {
		return `http://127.0.0.1:${this.port}`;
	}

	async start({ timeout = 240_000 } = {}) {
		if (!existsSync(PYTHON)) throw new Error(`No Python at ${PYTHON}: create the project's .venv first (or set LD_PYTHON)`);
		const args = [path.join(REPO, 'server', 'main.py'), '--pipeline', this.pipeline, '--tiny', '--port', '0', '--log-level', 'debug', ...this.args];
		this.proc = spawn(PYTHON, args, {
			cwd: REPO,
			env: { ...process.env, HF_HUB_OFFLINE: '1', PYTHONUNBUFFERED: '1' },
			stdio: ['ignore', 'pipe', 'pipe']
		});
		const onData = (d) => (this.log += d.toString());
		this.proc.stdout.on('data', onData);
		this.proc.stderr.on('data', onData);
		this.proc.on('exit', (code, signal) => (this.exited = { code, signal }));
		await waitFor(() => {
			if (this.exited) throw new Error(`server exited (${JSON.stringify(this.exited)}):\n${this.log.slice(-4000)}`);
			const listening = /Open https?:\/\/\S+:(\d+)$/m.exec(this.log);
			if (listening) this.port = Number(listening[1]);
			return Boolean(listening);
		}, { timeout, interval: 200, what: 'the server to start' }).catch((e) => {
			if (this.exited) throw new Error(`server exited (${JSON.stringify(this.exited)}):\n${this.log.slice(-4000)}`);
			throw e;
		});
		return this;
	}

	/** Index into the log, to wait only for lines written after it. */
	mark() {
		return this.log.length;
	}

	/** Waits for a log line after `from` matching `re`; returns the line. */
	async waitForLog(re, { from = 0, timeout = 60_000 } = {}) {
		return waitFor(
			() => {
				const lines = this.log.slice(from).split('\n');
				return lines.find((l) => re.test(l)) ?? false;
			},
			{ timeout, interval: 100, what: `server log ${re}` }
		);
	}

	async stop() {
		if (!this.proc || this.exited) return;
		this.proc.kill('SIGINT');
		try {
			await waitFor(() => this.exited, { timeout: 10_000, what: 'the server to exit' });
		} catch {
			this.proc.kill('SIGKILL');
			await waitFor(() => this.exited, { timeout: 5_000, what: 'the server to die' }).catch(() => {});
		}
	}
}

export const BASE_FLAGS = [
	'--headless',
	'--no-sandbox',
	'--disable-gpu',
	'--disable-background-networking',
	'--disable-component-update',
	'--disable-sync',
	'--disable-quic',
	'--no-first-run',
	'--disable-dev-shm-usage'
];

/**
 * Chromium with a fake camera playing `clip`; `fakeUi: false` leaves permission prompts to the
 * browser (headless: denied); `fakeCamera: false` gives it no camera at all.
 */
export async function launchChromium({ clip, fakeUi = true, fakeCamera = true, extra = [] } = {}) {
	if (!existsSync(CHROMIUM)) {
		throw new Error(
			`No Chromium at ${CHROMIUM}. Install Debian's: apt-get update && apt-get install -y --no-install-recommends chromium (or set CHROMIUM_PATH)`
		);
	}
	const args = [...BASE_FLAGS, ...extra];
	if (fakeCamera) args.push('--use-fake-device-for-media-stream');
	if (fakeUi) args.push('--use-fake-ui-for-media-stream');
	if (clip && fakeCamera) args.push(`--use-file-for-fake-video-capture=${clip}`);
	return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

/** Recorded in every page: the websockets it opened, so a test can check they were closed. */
export const INIT_SCRIPT = `
(() => {
	const Native = window.WebSocket;
	window.__sockets = [];
	window.WebSocket = class extends Native {
		constructor(...args) {
			super(...args);
			window.__sockets.push(this);
		}
	};
})();
`;

export function artifact(name) {
	mkdirSync(ARTIFACTS, { recursive: true });
	return path.join(ARTIFACTS, name);
}
