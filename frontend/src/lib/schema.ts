/**
 * Mapping from the server's pydantic JSON schemas (`GET /api/settings`) to the widgets on the page,
 * and validation of stored or typed values against them.
 */

export type FieldKind = 'range' | 'seed' | 'textarea' | 'checkbox' | 'select' | 'number' | 'text';
export type ValueType = 'integer' | 'number' | 'string' | 'boolean';
export type ParamValue = number | string | boolean;
export type ParamValues = Record<string, ParamValue>;
/** Image pipelines transform an input picture; text pipelines generate from the parameters alone. */
export type InputMode = 'image' | 'text';

/** A JSON-schema property as the server sends it (pydantic `json_schema_extra` keys included). */
export interface SchemaProperty {
	type?: string;
	anyOf?: { type?: string }[];
	default?: unknown;
	title?: string;
	description?: string;
	field?: string;
	id?: string;
	min?: number;
	max?: number;
	minimum?: number;
	maximum?: number;
	exclusiveMinimum?: number;
	exclusiveMaximum?: number;
	step?: number;
	hide?: boolean;
	values?: unknown[];
	enum?: unknown[];
	maxLength?: number;
	[key: string]: unknown;
}

export interface ObjectSchema {
	title?: string;
	properties?: Record<string, SchemaProperty>;
	[key: string]: unknown;
}

export interface Settings {
	info: ObjectSchema;
	input_params: ObjectSchema;
	max_queue_size: number;
	page_content: string;
	/** How the page may reach its session, preferred first ("webrtc", "mjpeg"); older servers leave it out. */
	transports?: string[];
	/** STUN and TURN servers for the page's RTCPeerConnection (the server's --ice-servers). */
	ice_servers?: RTCIceServer[];
}

export interface Widget {
	/** Key sent to the server (the property's `id`, or its name). */
	id: string;
	kind: FieldKind;
	type: ValueType;
	title: string;
	description?: string;
	default: ParamValue;
	min?: number;
	max?: number;
	step?: number;
	/** Hidden fields go under "Advanced". */
	advanced: boolean;
	/** Options of a select. */
	options?: string[];
	maxLength?: number;
}

const KINDS: readonly FieldKind[] = ['range', 'seed', 'textarea', 'checkbox', 'select', 'number', 'text'];

function num(v: unknown): number | undefined {
	return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function valueType(p: SchemaProperty): ValueType {
	const candidates = [p.type, ...(p.anyOf ?? []).map((a) => a.type)];
	for (const t of candidates) {
		if (t === 'integer' || t === 'number' || t === 'string' || t === 'boolean') return t;
	}
	switch (typeof p.default) {
		case 'boolean':
			return 'boolean';
		case 'number':
			return Number.isInteger(p.default) ? 'integer' : 'number';
		default:
			return 'string';
	}
}

function humanize(name: string): string {
	const s = name.replace(/[_-]+/g, ' ').trim();
	return s.charAt(0).toUpperCase() + s.slice(1);
}

/** One widget for one schema property. */
export function widgetFor(name: string, p: SchemaProperty): Widget {
	const type = valueType(p);
	const options = (p.values ?? p.enum)?.map((v) => String(v));
	let kind: FieldKind;
	if (typeof p.field === 'string' && (KINDS as readonly string[]).includes(p.field)) {
		kind = p.field as FieldKind;
	} else if (type === 'boolean') {
		kind = 'checkbox';
	} else if (options && options.length) {
		kind = 'select';
	} else if (type === 'string') {
		kind = 'text';
	} else {
		kind = 'number';
	}
	const min = num(p.min) ?? num(p.minimum) ?? num(p.exclusiveMinimum);
	const max = num(p.max) ?? num(p.maximum) ?? num(p.exclusiveMaximum);
	let step = num(p.step);
	if (step !== undefined && step <= 0) step = undefined;
	if (step === undefined && (kind === 'range' || kind === 'number' || kind === 'seed')) {
		step = type === 'integer' ? 1 : undefined;
	}
	const w: Widget = {
		id: typeof p.id === 'string' && p.id ? p.id : name,
		kind,
		type,
		title: p.title || humanize(name),
		description: p.description,
		default: fallbackDefault(type, kind, p.default, min, options),
		min,
		max,
		step,
		advanced: p.hide === true,
		options,
		maxLength: num(p.maxLength)
	};
	if (kind === 'range' && step === undefined && min !== undefined && max !== undefined) {
		// A float slider without a step would only move in whole units in some browsers.
		w.step = type === 'integer' ? 1 : niceStep(max - min);
	}
	w.default = sanitizeValue(w, w.default);
	return w;
}

function niceStep(span: number): number {
	if (!(span > 0)) return 0.01;
	const raw = span / 100;
	const p = Math.pow(10, Math.floor(Math.log10(raw)));
	return p;
}

function fallbackDefault(
	type: ValueType,
	kind: FieldKind,
	d: unknown,
	min: number | undefined,
	options: string[] | undefined
): ParamValue {
	if (d !== undefined && d !== null) {
		if (typeof d === 'number' || typeof d === 'string' || typeof d === 'boolean') return d;
	}
	if (type === 'boolean') return false;
	if (type === 'string') return kind === 'select' && options?.length ? options[0] : '';
	return min ?? 0;
}

/** Widgets for every property of `input_params`, in the schema's order. */
export function buildWidgets(schema: ObjectSchema | undefined | null): Widget[] {
	const props = schema?.properties ?? {};
	return Object.entries(props).map(([name, p]) => widgetFor(name, p ?? {}));
}

/** Decimal places a step needs (0.01 → 2). */
export function stepDecimals(step: number | undefined): number {
	if (step === undefined || Number.isInteger(step)) return 0;
	const s = String(step);
	if (s.includes('e-')) return Number(s.split('e-')[1]);
	return s.split('.')[1]?.length ?? 0;
}

/**
 * Coerce a value (from a text box, localStorage or an old version of the page) into something the
 * server accepts for this widget: right type, clamped to min/max, on the step grid. Returns the
 * widget's default when the value cannot be used.
 */
export function sanitizeValue(w: Widget, v: unknown): ParamValue {
	switch (w.type) {
		case 'boolean':
			if (typeof v === 'boolean') return v;
			if (v === 'true') return true;
			if (v === 'false') return false;
			return typeof w.default === 'boolean' ? w.default : false;
		case 'string': {
			if (typeof v !== 'string' && typeof v !== 'number') return w.default;
			let s = String(v);
			if (w.kind === 'select' && w.options?.length && !w.options.includes(s)) return w.default;
			if (w.maxLength !== undefined && s.length > w.maxLength) s = s.slice(0, w.maxLength);
			return s;
		}
		case 'integer':
		case 'number': {
			let n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
			if (!Number.isFinite(n)) return w.default;
			if (w.step !== undefined && w.step > 0 && w.kind !== 'seed') {
				const base = w.min ?? 0;
				n = base + Math.round((n - base) / w.step) * w.step;
				n = Number(n.toFixed(Math.min(10, stepDecimals(w.step) + 2)));
			}
			if (w.type === 'integer') n = Math.round(n);
			if (w.min !== undefined && n < w.min) n = w.min;
			if (w.max !== undefined && n > w.max) n = w.max;
			if (w.type === 'integer' && w.max !== undefined && n > w.max) n = Math.floor(w.max);
			return n;
		}
	}
}

/** Default values of all widgets, keyed by id. */
export function defaultValues(widgets: Widget[]): ParamValues {
	const out: ParamValues = {};
	for (const w of widgets) out[w.id] = w.default;
	return out;
}

/** Stored values merged over the defaults; unknown keys dropped, bad values replaced. */
export function mergeValues(widgets: Widget[], stored: unknown): ParamValues {
	const out = defaultValues(widgets);
	if (!stored || typeof stored !== 'object') return out;
	const rec = stored as Record<string, unknown>;
	for (const w of widgets) {
		if (Object.prototype.hasOwnProperty.call(rec, w.id)) out[w.id] = sanitizeValue(w, rec[w.id]);
	}
	return out;
}

/** A random seed in the widget's range (default 0 … 2^31-1). */
export function randomSeed(w?: Widget, rand: () => number = Math.random): number {
	const lo = Math.ceil(w?.min ?? 0);
	const hi = Math.floor(w?.max ?? 2_147_483_647);
	return lo + Math.floor(rand() * (hi - lo + 1));
}

/** `info.properties.input_mode.default`, "image" unless the server says "text". */
export function inputMode(settings: Pick<Settings, 'info'> | null | undefined): InputMode {
	const d = settings?.info?.properties?.input_mode?.default;
	return d === 'text' ? 'text' : 'image';
}

/** Whether the pipeline takes an image prompt besides the frames (an IP-Adapter set-up). */
export function takesImagePrompt(settings: Pick<Settings, 'info'> | null | undefined): boolean {
	return settings?.info?.properties?.takes_image_prompt?.default === true;
}

export function pipelineTitle(settings: Pick<Settings, 'info'> | null | undefined): string {
	const t = settings?.info?.properties?.title?.default;
	return typeof t === 'string' && t ? t : 'Live Diffusion';
}

/** Capture size from the width/height params, else 512x512; always a positive multiple of 8. */
export function captureSize(values: ParamValues): { width: number; height: number } {
	const snap = (v: unknown) => {
		const n = typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 512;
		return Math.max(8, Math.round(n / 8) * 8);
	};
	return { width: snap(values.width), height: snap(values.height) };
}

/** Short stable key for a pipeline, used in storage keys and file names. */
export function slug(s: string): string {
	return (
		s
			.toLowerCase()
			.replace(/[^a-z0-9]+/g, '-')
			.replace(/^-+|-+$/g, '')
			.slice(0, 48) || 'pipeline'
	);
}
