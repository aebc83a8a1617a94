// The browser half of bench/glass_to_glass.py: one transport, one Chromium, the real page.
//
//   node bench/glass_to_glass.mjs '{"url": "http://127.0.0.1:7860", "transport": "webrtc", "clip": "clip.y4m",
//                                   "warmup_s": 8, "duration_s": 20, "out": "result.json"}'
//
// Chromium (CHROMIUM_PATH: a wrapper that runs it in a network namespace, for the shaped link) plays
// the clip as its camera; the page opens with ?transport=..., Start is pressed, and the page is
// instrumented from outside (an init script, nothing of the page's own changed):
// - every frame the camera preview presents (requestVideoFrameCallback on [data-testid=input-video]),
//   and every output frame shown (requestVideoFrameCallback on the WebRTC <video>; for the MJPEG <img>
//   the load of each frame, then the next animation frame) is recorded with the rendering frame's time
//   and the mean colour of a 16x16 square at the picture's centre (the clip's code patch);
// - bytes: the page's RTCPeerConnections (kept by wrapping the constructor) report their selected
//   candidate pair's bytes (getStats); the websocket's messages are counted where they are sent and
//   received; HTTP responses (the MJPEG stream) by Chromium's own network instrumentation (CDP).
// On stdout it says {"window": "start"} and {"window": "end"} at the measured window's ends (the
// Python side samples the server then); the events and byte counts go to `out` as JSON.
import { writeFileSync } from 'node:fs';
import { launchChromium, waitFor } from '../frontend/e2e/harness.mjs';

const config = JSON.parse(process.argv[2]);
const log = (message) => process.stderr.write(`g2g ${config.transport}: ${message}\n`);
const say = (object) => process.stdout.write(JSON.stringify(object) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const LABELS = { webrtc: 'WebRTC', mjpeg: 'MJPEG' };

const INSTRUMENT = `
(() => {
	if (window.top !== window) return;
	const PATCH = ${Number(config.patch ?? 16)};
	const g = (window.__g2g = { input: [], output: [], peers: [], wsSent: 0, wsReceived: 0, errors: [] });
	const NativePeerConnection = window.RTCPeerConnection;
	if (NativePeerConnection) {
		window.RTCPeerConnection = class extends NativePeerConnection {
			constructor(...args) {
				super(...args);
				g.peers.push(this);
			}
		};
	}
	const size = (data) => (typeof data === 'string' ? new TextEncoder().encode(data).length : (data.size ?? data.byteLength ?? 0));
	const send = WebSocket.prototype.send;
	WebSocket.prototype.send = function (data) {
		g.wsSent += size(data);
		return send.call(this, data);
	};
	const NativeSocket = window.WebSocket;
	window.WebSocket = class extends NativeSocket {
		constructor(...args) {
			super(...args);
			this.addEventListener('message', (e) => (g.wsReceived += size(e.data)));
		}
	};
	let ctx = null;
	/** Mean R, G, B and the largest channel spread of the PATCHxPATCH square at the centre. */
	function patch(el, w, h) {
		if (!ctx) {
			const c = document.createElement('canvas');
			c.width = PATCH;
			c.height = PATCH;
			ctx = c.getContext('2d', { willReadFrequently: true });
		}
		ctx.drawImage(el, Math.round(w / 2 - PATCH / 2), Math.round(h / 2 - PATCH / 2), PATCH, PATCH, 0, 0, PATCH, PATCH);
		const d = ctx.getImageData(0, 0, PATCH, PATCH).data;
		const sum = [0, 0, 0], lo = [255, 255, 255], hi = [0, 0, 0];
		for (let i = 0; i < d.length; i += 4) {
			for (let c = 0; c < 3; c++) {
				const v = d[i + c];
				sum[c] += v;
				if (v < lo[c]) lo[c] = v;
				if (v > hi[c]) hi[c] = v;
			}
		}
		const n = d.length / 4;
		return [sum[0] / n, sum[1] / n, sum[2] / n, Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])];
	}
	// [rendering frame time, expected display time (video) or load time (img), presented frames, r, g, b, spread]
	function watchVideo(el, list) {
		const onFrame = (now, meta) => {
			try {
				if (el.videoWidth) list.push([now, meta.expectedDisplayTime, meta.presentedFrames, ...patch(el, el.videoWidth, el.videoHeight)]);
			} catch (e) {
				g.errors.push(String(e));
			}
			el.requestVideoFrameCallback(onFrame);
		};
		el.requestVideoFrameCallback(onFrame);
	}
	const watched = new WeakSet();
	setInterval(() => {
		for (const [selector, list] of [['[data-testid=input-video]', g.input], ['[data-testid=output-video]', g.output]]) {
			const el = document.querySelector(selector);
			if (el && !watched.has(el)) {
				watched.add(el);
				watchVideo(el, list);
			}
		}
	}, 20);
	// The MJPEG <img>: read in the load event's capture phase (before the page's own handler gives the
	// <img> its next frame), timed by the next animation frame, in which it is painted.
	document.addEventListener('load', (e) => {
		const el = e.target;
		if (!(el instanceof HTMLImageElement) || el.dataset.testid !== 'output-image' || !el.naturalWidth) return;
		const loadedAt = performance.now();
		let read;
		try {
			read = patch(el, el.naturalWidth, el.naturalHeight);
		} catch (err) {
			g.errors.push(String(err));
			return;
		}
		requestAnimationFrame((now) => g.output.push([now, loadedAt, 0, ...read]));
	}, true);

	/** The bytes of the page's peer connections (selected candidate pairs) and what the tracks did. */
	g.rtc = async () => {
		const out = { sent: 0, received: 0, outbound: null, inbound: null, rttMs: null };
		for (const pc of g.peers) {
			if (pc.connectionState === 'closed') continue;
			const stats = await pc.getStats();
			const codecs = new Map();
			let pairId = null;
			stats.forEach((s) => {
				if (s.type === 'codec') codecs.set(s.id, s.mimeType);
				if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
			});
			stats.forEach((s) => {
				if (s.type === 'candidate-pair' && (s.id === pairId || (!pairId && s.nominated && s.state === 'succeeded'))) {
					out.sent += s.bytesSent ?? 0;
					out.received += s.bytesReceived ?? 0;
					if (s.currentRoundTripTime !== undefined) out.rttMs = s.currentRoundTripTime * 1000;
					out.availableOutgoingBitrate = s.availableOutgoingBitrate ?? null;
				}
				if (s.type === 'outbound-rtp' && s.kind === 'video') {
					out.outbound = {
						codec: codecs.get(s.codecId) ?? null, bytesSent: s.bytesSent, headerBytesSent: s.headerBytesSent,
						framesEncoded: s.framesEncoded, framesSent: s.framesSent, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
						totalEncodeTime: s.totalEncodeTime, qpSum: s.qpSum, targetBitrate: s.targetBitrate,
						qualityLimitationReason: s.qualityLimitationReason, qualityLimitationDurations: s.qualityLimitationDurations,
						totalPacketSendDelay: s.totalPacketSendDelay, packetsSent: s.packetsSent, keyFramesEncoded: s.keyFramesEncoded,
						encoderImplementation: s.encoderImplementation
					};
				}
				if (s.type === 'inbound-rtp' && s.kind === 'video') {
					out.inbound = {
						codec: codecs.get(s.codecId) ?? null, bytesReceived: s.bytesReceived, headerBytesReceived: s.headerBytesReceived,
						framesDecoded: s.framesDecoded, framesDropped: s.framesDropped, framesReceived: s.framesReceived,
						frameWidth: s.frameWidth, frameHeight: s.frameHeight, totalDecodeTime: s.totalDecodeTime,
						jitterBufferDelay: s.jitterBufferDelay, jitterBufferEmittedCount: s.jitterBufferEmittedCount,
						jitterBufferTargetDelay: s.jitterBufferTargetDelay, packetsLost: s.packetsLost, nackCount: s.nackCount,
						pliCount: s.pliCount, keyFramesDecoded: s.keyFramesDecoded, totalProcessingDelay: s.totalProcessingDelay,
						totalAssemblyTime: s.totalAssemblyTime, decoderImplementation: s.decoderImplementation, qpSum: s.qpSum
					};
				}
			});
		}
		return out;
	};
})();
`;

async function main() {
	const extra = [];
	if (config.insecure_origin) extra.push(`--unsafely-treat-insecure-origin-as-secure=${config.insecure_origin}`);
	const browser = await launchChromium({ clip: config.clip, extra });
	try {
		const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
		await context.addInitScript(INSTRUMENT);
		const page = await context.newPage();
		const pageErrors = [];
		page.on('pageerror', (e) => pageErrors.push(String(e)));
		// HTTP bytes as Chromium's network stack counts them (the MJPEG stream is a fetch() response).
		const cdp = await context.newCDPSession(page);
		const http = { received: 0 };
		cdp.on('Network.dataReceived', (e) => (http.received += e.encodedDataLength || 0));
		await cdp.send('Network.enable', { maxTotalBufferSize: 1_000_000, maxResourceBufferSize: 100_000 });

		await page.goto(`${config.url}/?transport=${config.transport}`);
		await page.waitForSelector('[data-param]', { timeout: 30_000 });
		log('page loaded; starting');
		await page.locator('[data-testid=start]').click();
		const timeout = (config.start_timeout_s ?? 60) * 1000;
		await waitFor(() => page.evaluate(() => window.__g2g.output.length > 0 && window.__g2g.input.length > 0), {
			timeout,
			what: 'the first output frame'
		});
		const shown = (await page.locator('[data-testid=transport]').innerText()).trim();
		if (shown !== LABELS[config.transport]) {
			const notice = await page.locator('[data-testid=notice]').allInnerTexts().catch(() => []);
			throw new Error(`the page streams over ${shown}, not ${LABELS[config.transport]}: ${notice.join(' ')}`);
		}
		const counters = async () => {
			const [t, rtc, ws] = await page.evaluate(async () => [
				performance.now(),
				await window.__g2g.rtc(),
				{ sent: window.__g2g.wsSent, received: window.__g2g.wsReceived }
			]);
			return {
				t,
				sample: {
					webrtc_sent: rtc.sent, webrtc_received: rtc.received, ws_sent: ws.sent, ws_received: ws.received,
					http_received: http.received
				},
				rtc
			};
		};
		// A sample a second from the first output to the end (how WebRTC's bitrates ramp up).
		const timeline = [];
		let sampling = true;
		const sampler = (async () => {
			while (sampling) {
				const c = await counters().catch(() => null);
				if (c) {
					const o = c.rtc.outbound ?? {}, i = c.rtc.inbound ?? {};
					timeline.push({
						t: c.t, ...c.sample, framesEncoded: o.framesEncoded ?? null, targetBitrate: o.targetBitrate ?? null,
						qpSumSent: o.qpSum ?? null, framesDecoded: i.framesDecoded ?? null, jitterBufferDelay: i.jitterBufferDelay ?? null,
						jitterBufferEmittedCount: i.jitterBufferEmittedCount ?? null, availableOutgoingBitrate: c.rtc.availableOutgoingBitrate ?? null
					});
				}
				await sleep(1000);
			}
		})();
		log(`first output; warming up ${config.warmup_s} s`);
		await sleep(config.warmup_s * 1000);
		const start = await counters();
		say({ window: 'start' });
		await sleep(config.duration_s * 1000);
		const end = await counters();
		say({ window: 'end' });
		sampling = false;
		await sampler;

		const events = await page.evaluate(
			([from]) => ({
				input: window.__g2g.input.filter((e) => e[0] >= from),
				output: window.__g2g.output.filter((e) => e[0] >= from),
				errors: window.__g2g.errors.slice(0, 20)
			}),
			[start.t - 5000]
		);
		const fps = await page.locator('[data-testid=fps]').innerText().catch(() => '');
		const latency = await page.locator('[data-testid=latency]').innerText().catch(() => '');
		await page.locator('[data-testid=start]').click(); // Stop
		await waitFor(() => page.evaluate(() => window.__liveDiffusion?.state?.() === 'idle'), { timeout: 15_000, what: 'the page to stop' }).catch(() => {});

		const seconds = (end.t - start.t) / 1000;
		const rate = (a, b) => (a === undefined || b === undefined || a === null || b === null ? null : (b - a) / seconds);
		let rtcStats = null;
		if (end.rtc.outbound || end.rtc.inbound) {
			const o0 = start.rtc.outbound ?? {}, o1 = end.rtc.outbound ?? {};
			const i0 = start.rtc.inbound ?? {}, i1 = end.rtc.inbound ?? {};
			const decoded = (i1.framesDecoded ?? 0) - (i0.framesDecoded ?? 0);
			const emitted = (i1.jitterBufferEmittedCount ?? 0) - (i0.jitterBufferEmittedCount ?? 0);
			const encoded = (o1.framesEncoded ?? 0) - (o0.framesEncoded ?? 0);
			const durations = (o1.qualityLimitationDurations ?? {});
			const before = (o0.qualityLimitationDurations ?? {});
			rtcStats = {
				outbound: {
					codec: o1.codec, frameWidth: o1.frameWidth, frameHeight: o1.frameHeight, encoder: o1.encoderImplementation,
					fps: rate(o0.framesEncoded, o1.framesEncoded), bitrate: rate((o0.bytesSent ?? 0) + (o0.headerBytesSent ?? 0), (o1.bytesSent ?? 0) + (o1.headerBytesSent ?? 0)),
					encodeMs: encoded ? (1000 * ((o1.totalEncodeTime ?? 0) - (o0.totalEncodeTime ?? 0))) / encoded : null,
					qpMean: encoded ? ((o1.qpSum ?? 0) - (o0.qpSum ?? 0)) / encoded : null,
					targetBitrate: o1.targetBitrate ?? null,
					packetSendDelayMs: (o1.packetsSent ?? 0) - (o0.packetsSent ?? 0) ? (1000 * ((o1.totalPacketSendDelay ?? 0) - (o0.totalPacketSendDelay ?? 0))) / ((o1.packetsSent ?? 0) - (o0.packetsSent ?? 0)) : null,
					qualityLimitationReason: o1.qualityLimitationReason,
					qualityLimitationSeconds: Object.fromEntries(Object.entries(durations).map(([k, v]) => [k, v - (before[k] ?? 0)])),
					keyFrames: (o1.keyFramesEncoded ?? 0) - (o0.keyFramesEncoded ?? 0)
				},
				inbound: {
					codec: i1.codec, frameWidth: i1.frameWidth, frameHeight: i1.frameHeight, decoder: i1.decoderImplementation,
					fps: rate(i0.framesDecoded, i1.framesDecoded), bitrate: rate((i0.bytesReceived ?? 0) + (i0.headerBytesReceived ?? 0), (i1.bytesReceived ?? 0) + (i1.headerBytesReceived ?? 0)),
					decodeMs: decoded ? (1000 * ((i1.totalDecodeTime ?? 0) - (i0.totalDecodeTime ?? 0))) / decoded : null,
					jitterBufferMs: emitted ? (1000 * ((i1.jitterBufferDelay ?? 0) - (i0.jitterBufferDelay ?? 0))) / emitted : null,
					jitterBufferTargetMs: emitted ? (1000 * ((i1.jitterBufferTargetDelay ?? 0) - (i0.jitterBufferTargetDelay ?? 0))) / emitted : null,
					processingMs: decoded ? (1000 * ((i1.totalProcessingDelay ?? 0) - (i0.totalProcessingDelay ?? 0))) / decoded : null,
					framesDroppedPerS: rate(i0.framesDropped ?? 0, i1.framesDropped ?? 0),
					packetsLost: (i1.packetsLost ?? 0) - (i0.packetsLost ?? 0), nacks: (i1.nackCount ?? 0) - (i0.nackCount ?? 0),
					plis: (i1.pliCount ?? 0) - (i0.pliCount ?? 0), keyFrames: (i1.keyFramesDecoded ?? 0) - (i0.keyFramesDecoded ?? 0),
					qpMean: decoded ? ((i1.qpSum ?? 0) - (i0.qpSum ?? 0)) / decoded : null
				},
				rttMs: end.rtc.rttMs,
				availableOutgoingBitrate: end.rtc.availableOutgoingBitrate ?? null
			};
		}
		const result = {
			transport: config.transport,
			transport_shown: shown,
			time_origin: await page.evaluate(() => performance.timeOrigin),
			window: { start: start.t, end: end.t },
			bytes: { start: start.sample, end: end.sample },
			rtc_stats: rtcStats,
			page_figures: { fps, latency },
			timeline,
			input: events.input,
			output: events.output,
			instrument_errors: events.errors,
			page_errors: pageErrors
		};
		writeFileSync(config.out, JSON.stringify(result));
		log(`done: ${events.input.length} input and ${events.output.length} output events`);
		await context.close();
	} finally {
		await browser.close().catch(() => {});
	}
}

main().catch((e) => {
	process.stderr.write(`g2g ${config.transport}: ${e.stack ?? e}\n`);
	process.exit(1);
});
