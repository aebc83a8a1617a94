// One live session at a time: Start → (prepare: settings, input source) → websocket → live → ended.
// The websocket conversation itself is LiveClient's (protocol.ts); this module owns its lifecycle
// and tells the rest of the page what happened through the hooks. Parameters go with every frame.
import { LiveClient, socketUrl, type ClientEvent, type EndReason, type SocketLike } from './protocol';
import type { InputMode, ParamValues } from './schema';
import { uuid } from './storage';

export type Phase = 'idle' | 'starting' | 'connecting' | 'live';

export interface SessionHooks {
	/**
	 * Before connecting: load what is missing and open the input source. Resolves false to cancel
	 * the start; `stillWanted()` turns false once the user stopped meanwhile.
	 */
	prepare(stillWanted: () => boolean): Promise<boolean>;
	inputMode(): InputMode;
	/** The parameter values to send with the next frame. */
	params(): ParamValues;
	/** One JPEG of the input, or null when there is none yet. */
	frame(): Promise<Blob | null>;
	/** Which input the frames come from; a new value tells the server the scene changed. */
	sourceId?(): number;
	/** A new session with this user id is about to connect. */
	onConnecting(userId: string): void;
	/** The server accepted the session: its output stream can be opened. */
	onLive(userId: string, streamToken: string): void;
	/** An input went out that an output frame will answer (latency is measured from `at`). */
	onInputSent(at: number): void;
	/** An error the server reported; the session goes on. */
	onServerError(message: string): void;
	/** News from the server that is no error; the session goes on. */
	onServerInfo?(message: string): void;
	/** The image prompt to send when the session starts (IP-Adapter pipelines), or null. */
	imagePrompt?(): Blob | null;
	onEnded(reason: EndReason, message: string): void;
}

export interface SessionOptions {
	/** Where the page is: the websocket goes to its host. */
	page?: { protocol: string; host: string };
	/** A stand-in for the browser WebSocket (tests). */
	createSocket?: (url: string) => SocketLike;
}

export class LiveSession {
	phase = $state<Phase>('idle');
	/** The user id of the current or last session. */
	userId = '';
	/** Opens this session's output stream past any others (from the server's "connected"). */
	streamToken = '';
	/** The parameter values sent last (a snapshot records them). */
	lastSentParams: ParamValues = {};
	/** Inputs sent in this session that wait for an output. */
	framesSent = 0;
	#hooks: SessionHooks;
	#options: SessionOptions;
	#client: LiveClient | null = null;
	#lastClient: LiveClient | null = null;
	/** Bumped on every start and end: async work begun for an older one drops its result. */
	#generation = 0;
	#lastSentJson = '';
	#lastSendChanged = true;

	constructor(hooks: SessionHooks, options: SessionOptions = {}) {
		this.#hooks = hooks;
		this.#options = options;
	}

	/** A check that stays true until the current start or session is over. */
	guard(): () => boolean {
		const generation = this.#generation;
		return () => generation === this.#generation;
	}

	/** readyState of the latest websocket (kept after it closed), null before the first. */
	get socketState(): number | null {
		return this.#lastClient?.socketReadyState ?? null;
	}

	toggle(): void {
		if (this.phase === 'idle') void this.start();
		else this.stop();
	}

	async start(): Promise<void> {
		if (this.phase !== 'idle') return;
		this.#generation++;
		const stillWanted = this.guard();
		this.framesSent = 0;
		this.phase = 'starting';
		const ok = await this.#hooks.prepare(stillWanted);
		if (!stillWanted()) return;
		if (!ok) {
			this.phase = 'idle';
			return;
		}
		this.phase = 'connecting';
		this.userId = uuid();
		this.#lastSentJson = '';
		this.framesSent = 0;
		this.#hooks.onConnecting(this.userId);
		const client: LiveClient = new LiveClient({
			url: socketUrl(this.#options.page ?? location, this.userId),
			createSocket: this.#options.createSocket,
			inputMode: this.#hooks.inputMode(),
			getParams: () => this.#paramsToSend(),
			getFrame: () => this.#hooks.frame(),
			sourceId: () => this.#hooks.sourceId?.() ?? 0,
			onEvent: (e) => this.#onClientEvent(client, e)
		});
		this.#client = client;
		this.#lastClient = client;
		client.connect();
	}

	/** Send a new image prompt (or drop it: null) to the live session; a later session sends the hook's. */
	sendImagePrompt(jpeg: Blob | null): void {
		if (this.phase === 'live') this.#client?.sendImagePrompt(jpeg);
	}

	stop(): void {
		if (this.phase === 'idle') return;
		if (this.#client) this.#client.stop();
		else this.#end('stopped', '');
	}

	#paramsToSend(): ParamValues {
		this.lastSentParams = this.#hooks.params();
		const json = JSON.stringify(this.lastSentParams);
		this.#lastSendChanged = json !== this.#lastSentJson;
		this.#lastSentJson = json;
		return this.lastSentParams;
	}

	#onClientEvent(c: LiveClient, e: ClientEvent): void {
		if (c !== this.#client) return;
		switch (e.type) {
			case 'connected': {
				this.phase = 'live';
				this.streamToken = e.streamToken;
				const prompt = this.#hooks.imagePrompt?.() ?? null;
				if (prompt) c.sendImagePrompt(prompt);
				this.#hooks.onLive(this.userId, e.streamToken);
				break;
			}
			case 'frame-sent':
				// A text pipeline generates only when the parameters change: only such sends wait
				// for an output, so only they count for latency.
				if (!e.empty && (this.#hooks.inputMode() === 'image' || this.#lastSendChanged)) {
					this.framesSent++;
					this.#hooks.onInputSent(e.at);
				}
				break;
			case 'server-error':
				this.#hooks.onServerError(e.message);
				break;
			case 'server-info':
				this.#hooks.onServerInfo?.(e.message);
				break;
			case 'ended':
				this.#end(e.reason, e.message);
				break;
		}
	}

	#end(reason: EndReason, message: string): void {
		this.#generation++;
		this.#client = null;
		this.phase = 'idle';
		this.#hooks.onEnded(reason, message);
	}
}
