import { describe, expect, it } from 'vitest';
import {
	buildWidgets,
	captureSize,
	defaultValues,
	inputMode,
	mergeValues,
	pipelineTitle,
	randomSeed,
	sanitizeValue,
	stepDecimals,
	widgetFor,
	type ObjectSchema
} from './schema';

// The shape pydantic produces for the img2img pipeline's InputParams.
const img2img: ObjectSchema = {
	title: 'InputParams',
	type: 'object',
	properties: {
		prompt: { default: 'a cat', title: 'Prompt', field: 'textarea', id: 'prompt', type: 'string' },
		negative_prompt: {
			default: 'blurry',
			title: 'Negative Prompt',
			field: 'textarea',
			id: 'negative_prompt',
			hide: true,
			type: 'string'
		},
		seed: { default: 2159232, title: 'Seed', field: 'seed', id: 'seed', type: 'integer', min: 0, max: 2147483647 },
		steps: { default: 4, title: 'Steps', field: 'range', id: 'steps', type: 'integer', min: 1, max: 8 },
		guidance_scale: {
			default: 0.2,
			title: 'Guidance Scale',
			field: 'range',
			id: 'guidance_scale',
			type: 'number',
			min: 0,
			max: 2,
			step: 0.01
		},
		strength: { default: 0.5, title: 'Strength', field: 'range', id: 'strength', type: 'number', min: 0.25, max: 1, step: 0.001 },
		width: { default: 512, title: 'Width', field: 'range', id: 'width', type: 'integer', min: 256, max: 1024, step: 8, hide: true },
		height: { default: 512, title: 'Height', field: 'range', id: 'height', type: 'integer', min: 256, max: 1024, step: 8, hide: true },
		debug: { default: false, title: 'Debug', field: 'checkbox', id: 'debug', type: 'boolean' },
		scheduler: { default: 'lcm', title: 'Scheduler', field: 'select', id: 'sched', values: ['lcm', 'euler'], type: 'string' }
	}
};

describe('buildWidgets', () => {
	const ws = buildWidgets(img2img);

	it('keeps the schema order and maps every field kind', () => {
		expect(ws.map((w) => [w.id, w.kind])).toEqual([
			['prompt', 'textarea'],
			['negative_prompt', 'textarea'],
			['seed', 'seed'],
			['steps', 'range'],
			['guidance_scale', 'range'],
			['strength', 'range'],
			['width', 'range'],
			['height', 'range'],
			['debug', 'checkbox'],
			['sched', 'select']
		]);
	});

	it('puts hidden fields under advanced', () => {
		expect(ws.filter((w) => w.advanced).map((w) => w.id)).toEqual(['negative_prompt', 'width', 'height']);
	});

	it('carries bounds, steps, types and options', () => {
		const steps = ws.find((w) => w.id === 'steps')!;
		expect(steps).toMatchObject({ type: 'integer', min: 1, max: 8, step: 1, default: 4, title: 'Steps' });
		const g = ws.find((w) => w.id === 'guidance_scale')!;
		expect(g).toMatchObject({ type: 'number', min: 0, max: 2, step: 0.01, default: 0.2 });
		expect(ws.find((w) => w.id === 'sched')!.options).toEqual(['lcm', 'euler']);
	});

	it('gives default values keyed by id', () => {
		expect(defaultValues(ws)).toEqual({
			prompt: 'a cat',
			negative_prompt: 'blurry',
			seed: 2159232,
			steps: 4,
			guidance_scale: 0.2,
			strength: 0.5,
			width: 512,
			height: 512,
			debug: false,
			sched: 'lcm'
		});
	});

	it('handles an empty or missing schema', () => {
		expect(buildWidgets(undefined)).toEqual([]);
		expect(buildWidgets({})).toEqual([]);
	});

	it('infers a widget when `field` is missing or unknown', () => {
		expect(widgetFor('flag', { type: 'boolean', default: true }).kind).toBe('checkbox');
		expect(widgetFor('name', { type: 'string' }).kind).toBe('text');
		expect(widgetFor('mode', { type: 'string', enum: ['a', 'b'] })).toMatchObject({ kind: 'select', default: 'a' });
		expect(widgetFor('n', { type: 'integer', minimum: 2, maximum: 9, default: 3, field: 'weird' })).toMatchObject({
			kind: 'number',
			min: 2,
			max: 9,
			step: 1,
			title: 'N'
		});
		expect(widgetFor('cfg_scale', { anyOf: [{ type: 'number' }, { type: 'null' }], default: 1.5 })).toMatchObject({
			type: 'number',
			title: 'Cfg scale'
		});
	});

	it('gives a float slider without a step a fine step', () => {
		expect(widgetFor('x', { type: 'number', field: 'range', min: 0, max: 1, default: 0.5 }).step).toBe(0.01);
	});
});

describe('sanitizeValue', () => {
	const ws = buildWidgets(img2img);
	const w = (id: string) => ws.find((x) => x.id === id)!;

	it('clamps, rounds and snaps numbers', () => {
		expect(sanitizeValue(w('steps'), 100000)).toBe(8);
		expect(sanitizeValue(w('steps'), '3.6')).toBe(4);
		expect(sanitizeValue(w('steps'), -5)).toBe(1);
		expect(sanitizeValue(w('guidance_scale'), 0.123456)).toBe(0.12);
		expect(sanitizeValue(w('width'), 65536)).toBe(1024);
		expect(sanitizeValue(w('width'), 517)).toBe(520);
		expect(sanitizeValue(w('width'), 300)).toBe(304);
	});

	it('falls back to the default for unusable values', () => {
		expect(sanitizeValue(w('steps'), 'abc')).toBe(4);
		expect(sanitizeValue(w('steps'), null)).toBe(4);
		expect(sanitizeValue(w('steps'), '')).toBe(4);
		expect(sanitizeValue(w('debug'), 'maybe')).toBe(false);
		expect(sanitizeValue(w('debug'), 'true')).toBe(true);
		expect(sanitizeValue(w('sched'), 'ddim')).toBe('lcm');
		expect(sanitizeValue(w('prompt'), { a: 1 })).toBe('a cat');
	});

	it('keeps seeds whole but not on a step grid', () => {
		expect(sanitizeValue(w('seed'), 12345.4)).toBe(12345);
		expect(sanitizeValue(w('seed'), -1)).toBe(0);
	});

	it('cuts strings to maxLength', () => {
		const t = widgetFor('p', { type: 'string', field: 'textarea', maxLength: 5 });
		expect(sanitizeValue(t, 'abcdefgh')).toBe('abcde');
	});
});

describe('mergeValues', () => {
	const ws = buildWidgets(img2img);
	it('merges stored values over defaults, dropping unknown keys and bad values', () => {
		const v = mergeValues(ws, { prompt: 'a dog', steps: 99, unknown: 1, debug: 'x', width: 640 });
		expect(v.prompt).toBe('a dog');
		expect(v.steps).toBe(8);
		expect(v.debug).toBe(false);
		expect(v.width).toBe(640);
		expect('unknown' in v).toBe(false);
	});
	it('ignores garbage', () => {
		expect(mergeValues(ws, 'nope')).toEqual(defaultValues(ws));
		expect(mergeValues(ws, null)).toEqual(defaultValues(ws));
	});
});

describe('helpers', () => {
	it('reads input mode and title from info', () => {
		const info = { properties: { input_mode: { default: 'text' }, title: { default: 'SDXL Turbo' } } };
		expect(inputMode({ info })).toBe('text');
		expect(inputMode({ info: { properties: {} } })).toBe('image');
		expect(inputMode(null)).toBe('image');
		expect(pipelineTitle({ info })).toBe('SDXL Turbo');
		expect(pipelineTitle(null)).toBe('Live Diffusion');
	});
	it('computes the capture size from width/height', () => {
		expect(captureSize({ width: 512, height: 768 })).toEqual({ width: 512, height: 768 });
		expect(captureSize({})).toEqual({ width: 512, height: 512 });
		expect(captureSize({ width: 517, height: -3 })).toEqual({ width: 520, height: 512 });
	});
	it('randomises seeds inside the range', () => {
		const w = widgetFor('seed', { type: 'integer', field: 'seed', min: 10, max: 20 });
		expect(randomSeed(w, () => 0)).toBe(10);
		expect(randomSeed(w, () => 0.999999)).toBe(20);
		expect(randomSeed(undefined, () => 0.5)).toBe(1073741824);
	});
	it('counts step decimals', () => {
		expect(stepDecimals(0.01)).toBe(2);
		expect(stepDecimals(1)).toBe(0);
		expect(stepDecimals(1e-7)).toBe(7);
		expect(stepDecimals(undefined)).toBe(0);
	});
});
