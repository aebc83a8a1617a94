// The server's pipeline as the page knows it: its settings (`/api/settings`), the parameter values
// (stored per pipeline), where it runs (`/api/health`) and how many users share the server
// (`/api/queue`).
import {
	buildWidgets,
	captureSize,
	defaultValues,
	inputMode,
	mergeValues,
	pipelineTitle,
	slug,
	takesImagePrompt,
	type ParamValues,
	type Settings
} from './schema';
import { load, save } from './storage';

interface Health {
	pipeline?: string;
	device?: string;
	dtype?: string;
	users?: number;
	max_users?: number;
}

const ANSWER_TIMEOUT_MS = 5000;
/** Text pipelines generate on every change of the parameters: wait until the typing pauses. */
const TEXT_DEBOUNCE_MS = 350;

async function fetchJson<T>(url: string): Promise<T> {
	const ac = new AbortController();
	const t = setTimeout(() => ac.abort(), ANSWER_TIMEOUT_MS);
	try {
		const res = await fetch(url, { signal: ac.signal, cache: 'no-store' });
		if (!res.ok) throw new Error(`HTTP ${res.status}`);
		return (await res.json()) as T;
	} finally {
		clearTimeout(t);
	}
}

function nameOf(s: Settings | null): string {
	const n = s?.info?.properties?.name?.default;
	return typeof n === 'string' && n ? n : slug(pipelineTitle(s));
}

export class Pipeline {
	settings = $state.raw<Settings | null>(null);
	health = $state.raw<Health | null>(null);
	loading = $state(true);
	values = $state<ParamValues>({});
	/** Users on the server now; null while unknown. */
	users = $state<number | null>(null);

	readonly widgets = $derived(buildWidgets(this.settings?.input_params));
	readonly mode = $derived(inputMode(this.settings));
	readonly title = $derived(pipelineTitle(this.settings));
	readonly takesImagePrompt = $derived(takesImagePrompt(this.settings));
	/** The pipeline's short name (snapshot names and metadata, stored values). */
	readonly name = $derived(nameOf(this.settings));
	/** Width and height of the frames sent and generated. */
	readonly size = $derived(captureSize(this.values));
	readonly maxUsers = $derived(this.settings?.max_queue_size ?? 0);

	/** The values sent to the server: a copy of `values`, debounced for text pipelines. */
	#toSend: ParamValues = {};
	#debounceTimer: ReturnType<typeof setTimeout> | undefined;

	/** Loads the settings and the stored values; resolves with why it failed, or null. */
	async load(): Promise<string | null> {
		this.loading = true;
		try {
			const s = await fetchJson<Settings>('/api/settings');
			this.values = mergeValues(buildWidgets(s.input_params), load(storageKey(s)));
			this.#toSend = $state.snapshot(this.values);
			this.settings = s;
			void fetchJson<Health>('/api/health')
				.then((h) => (this.health = h))
				.catch(() => {});
			void this.refreshUsers();
			return null;
		} catch (e) {
			return e instanceof Error && e.name === 'AbortError' ? 'No answer within 5 s' : 'Cannot load the pipeline settings';
		} finally {
			this.loading = false;
		}
	}

	async refreshUsers(): Promise<void> {
		if (!this.settings || !(this.settings.max_queue_size > 0) || document.hidden) return;
		try {
			const q = await fetchJson<{ queue_size: number }>('/api/queue');
			this.users = typeof q.queue_size === 'number' ? q.queue_size : null;
		} catch {
			this.users = null; // unknown: the session reports the failure itself when it matters
		}
	}

	resetValues(): void {
		this.values = defaultValues(this.widgets);
	}

	/** Values set from elsewhere (a preset, the server): each checked against its control; the others stay. */
	setValues(changed: Record<string, unknown>): void {
		this.values = mergeValues(this.widgets, { ...$state.snapshot(this.values), ...changed });
	}

	/**
	 * Stores the values and updates the copy to send. Run in an effect: it reads every value, so it
	 * runs again on each change.
	 */
	valuesChanged(): void {
		const snap = $state.snapshot(this.values) as ParamValues;
		if (!this.settings) return;
		save(storageKey(this.settings), snap);
		clearTimeout(this.#debounceTimer);
		if (this.mode === 'text') this.#debounceTimer = setTimeout(() => (this.#toSend = snap), TEXT_DEBOUNCE_MS);
		else this.#toSend = snap;
	}

	/** The parameter values to send with the next frame. */
	valuesToSend(): ParamValues {
		return this.mode === 'text' ? this.#toSend : ($state.snapshot(this.values) as ParamValues);
	}
}

function storageKey(s: Settings): string {
	return `params:${slug(nameOf(s))}`;
}
