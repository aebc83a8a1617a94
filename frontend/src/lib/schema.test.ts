import { describe, expect, it } from 'vitest';
// What the server really sends on GET /api/settings, one file per pipeline, written by
// scripts/settings_fixtures.py from the pydantic models (tests/test_settings_fixtures.py keeps them
// in step with the server). Never edit them by hand.
import controlnetCannyJson from './fixtures/settings/controlnet_canny.json';
import depthHyperSdxlJson from './fixtures/settings/controlnetDepthHyperSDXL.json';
import img2imgJson from './fixtures/settings/img2img.json';
import sdTurboJson from './fixtures/settings/img2img_sd_turbo.json';
import sdxlJson from './fixtures/settings/img2img_sdxl_lcm_lora.json';
import txt2imgJson from './fixtures/settings/txt2img.json';
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
	type SchemaProperty,
	type Settings,
	type Widget
} from './schema';

const img2img: Settings = img2imgJson;
const controlnetCanny: Settings = controlnetCannyJson;
const sdTurbo: Settings = sdTurboJson;
const sdxl: Settings = sdxlJson;
const txt2img: Settings = txt2imgJson;
const depthHyperSdxl: Settings = depthHyperSdxlJson;
const ALL: Record<string, Settings> = {
	img2img,
	img2img_sd_turbo: sdTurbo,
	img2img_sdxl_lcm_lora: sdxl,
	controlnet_canny: controlnetCanny,
	txt2img
};

/** A real property of a fixture (a copy: tests that derive a variant must not change the fixture). */
function prop(s: Settings, name: string): SchemaProperty {
	const p = s.input_params.properties?.[name];
	if (!p) throw new Error(`the fixture has no property ${name}`);
	return structuredClone(p);
}

function widget(ws: Widget[], id: string): Widget {
	const w = ws.find((x) => x.id === id);
	if (!w) throw new Error(`no widget ${id} among ${ws.map((x) => x.id).join(', ')}`);
	return w;
}

describe('buildWidgets on the img2img settings', () => {
	const ws = buildWidgets(img2img.input_params);

	it('builds one widget per parameter, in the server order, of the kind the server asks for', () => {
		expect(ws.map((w) => [w.id, w.kind])).toEqual([
			['prompt', 'textarea'],
			['negative_prompt', 'textarea'],
			['seed', 'seed'],
			['steps', 'range'],
			['guidance_scale', 'range'],
			['strength', 'range'],
			['temporal_consistency', 'range'],
			['width', 'range'],
			['height', 'range']
		]);
	});

	it('shows prompt, seed, strength and temporal consistency, and puts the rest under Advanced', () => {
		expect(ws.filter((w) => !w.advanced).map((w) => w.id)).toEqual(['prompt', 'seed', 'strength', 'temporal_consistency']);
		expect(ws.filter((w) => w.advanced).map((w) => w.id)).toEqual(['negative_prompt', 'steps', 'guidance_scale', 'width', 'height']);
	});

	it('gives each slider the bounds, step and default of the server', () => {
		expect(widget(ws, 'steps')).toMatchObject({ type: 'integer', min: 1, max: 15, step: 1, default: 4, title: 'Steps' });
		expect(widget(ws, 'guidance_scale')).toMatchObject({ type: 'number', min: 0, max: 2, step: 0.01, default: 0.2, title: 'Guidance scale' });
		expect(widget(ws, 'strength')).toMatchObject({ type: 'number', min: 0.1, max: 1, step: 0.01, default: 0.5, title: 'Strength' });
		expect(widget(ws, 'temporal_consistency')).toMatchObject({ type: 'number', min: 0, max: 1, step: 0.01, default: 0, title: 'Temporal consistency' });
		expect(widget(ws, 'width')).toMatchObject({ type: 'integer', min: 256, max: 1024, step: 8, default: 512 });
		expect(widget(ws, 'seed')).toMatchObject({ type: 'integer', min: 0, max: 4294967295, default: 2159232 });
	});

	it('carries the descriptions shown under a control, and the prompt length limit', () => {
		expect(widget(ws, 'strength').description).toBe('How far the output may stray from the input');
		expect(widget(ws, 'steps').description).toBeUndefined();
		expect(widget(ws, 'prompt')).toMatchObject({ type: 'string', maxLength: 1000 });
	});

	it('starts from the default values of the server', () => {
		expect(defaultValues(ws)).toEqual({
			prompt:
				'Portrait of The Terminator with glare pose, detailed, intricate, full of colour, cinematic lighting, trending on artstation, 8k, hyperrealistic, focused, extreme details, masterpiece',
			negative_prompt: '',
			seed: 2159232,
			steps: 4,
			guidance_scale: 0.2,
			strength: 0.5,
			temporal_consistency: 0,
			width: 512,
			height: 512
		});
	});
});

describe('buildWidgets on every pipeline', () => {
	for (const [name, s] of Object.entries(ALL)) {
		it(`${name}: every parameter gets the widget named by its "field", holding the server's default`, () => {
			const props = Object.entries(s.input_params.properties ?? {});
			const ws = buildWidgets(s.input_params);
			expect(ws.map((w) => w.id)).toEqual(props.map(([key, p]) => p.id ?? key));
			for (const [i, [key, p]] of props.entries()) {
				expect(ws[i].kind, key).toBe(p.field);
				expect(ws[i].default, key).toEqual(p.default);
				expect(ws[i].advanced, key).toBe(p.hide === true);
				// A default the page would change before sending would be a bug of the page.
				expect(sanitizeValue(ws[i], p.default), key).toEqual(p.default);
			}
		});
	}

	it('controlnet_canny: a checkbox (off) and the edge thresholds, all under Advanced', () => {
		const ws = buildWidgets(controlnetCanny.input_params);
		expect(widget(ws, 'debug_canny')).toMatchObject({ kind: 'checkbox', type: 'boolean', default: false, advanced: true, title: 'Debug canny' });
		expect(widget(ws, 'canny_low')).toMatchObject({ kind: 'range', type: 'integer', min: 0, max: 255, step: 1, default: 100, advanced: true });
		expect(widget(ws, 'canny_high')).toMatchObject({ kind: 'range', min: 0, max: 255, default: 200 });
		expect(widget(ws, 'controlnet_scale')).toMatchObject({ kind: 'range', min: 0, max: 2, step: 0.01, default: 0.8, advanced: false });
		expect(ws.filter((w) => !w.advanced).map((w) => w.id)).toEqual(['prompt', 'seed', 'strength', 'temporal_consistency', 'controlnet_scale']);
	});

	it('a set-up (controlnetDepthHyperSDXL): its ControlNet scale in view, its window, TCD eta and the control inset under Advanced', () => {
		const ws = buildWidgets(depthHyperSdxl.input_params);
		expect(widget(ws, 'depth_scale')).toMatchObject({ kind: 'range', min: 0, max: 2, step: 0.01, default: 0.5, advanced: false, title: 'Depth scale' });
		expect(widget(ws, 'depth_start')).toMatchObject({ kind: 'range', min: 0, max: 1, default: 0, advanced: true });
		expect(widget(ws, 'eta')).toMatchObject({ kind: 'range', min: 0, max: 1, default: 1, advanced: true });
		expect(widget(ws, 'debug_control')).toMatchObject({ kind: 'checkbox', default: false, advanced: true });
		expect(captureSize(defaultValues(ws))).toEqual({ width: 1024, height: 1024 });
		expect(ws.filter((w) => !w.advanced).map((w) => w.id)).toEqual(['prompt', 'seed', 'strength', 'temporal_consistency', 'depth_scale']);
	});

	it('img2img_sdxl_lcm_lora: captures at 768x768 and allows no less than 512', () => {
		const ws = buildWidgets(sdxl.input_params);
		expect(captureSize(defaultValues(ws))).toEqual({ width: 768, height: 768 });
		expect(sanitizeValue(widget(ws, 'width'), 300)).toBe(512);
		expect(defaultValues(ws).negative_prompt).toBe('blurry, low quality');
	});

	it('img2img_sd_turbo: one step and no guidance by default', () => {
		const ws = buildWidgets(sdTurbo.input_params);
		expect(widget(ws, 'steps')).toMatchObject({ default: 1, min: 1, max: 10 });
		expect(widget(ws, 'guidance_scale').default).toBe(0);
	});

	it('txt2img: no strength slider (there is no input image)', () => {
		const ws = buildWidgets(txt2img.input_params);
		expect(ws.map((w) => w.id)).toEqual(['prompt', 'negative_prompt', 'seed', 'steps', 'guidance_scale', 'width', 'height']);
	});

	it('handles an empty or missing schema', () => {
		expect(buildWidgets(undefined)).toEqual([]);
		expect(buildWidgets({})).toEqual([]);
	});
});

describe('widgets for kinds no pipeline declares', () => {
	// No pipeline has a select or a parameter without a `field`; the page still builds them. The
	// schemas below are real pydantic output, or one real property with one key changed.

	it('a pydantic enum without a field (Info.input_mode, real) becomes a select of its values', () => {
		const w = widgetFor('input_mode', structuredClone(img2img.info.properties!.input_mode));
		expect(w).toMatchObject({ kind: 'select', type: 'string', options: ['image', 'text'], default: 'image', title: 'Input Mode' });
		expect(sanitizeValue(w, 'text')).toBe('text');
		expect(sanitizeValue(w, 'video')).toBe('image');
	});

	it('a plain string without a field (Info.title, real) becomes a text box', () => {
		expect(widgetFor('title', structuredClone(img2img.info.properties!.title))).toMatchObject({ kind: 'text', default: 'Image-to-Image LCM' });
	});

	it('an integer whose field is missing or unknown becomes a number box with the same bounds', () => {
		const steps = prop(img2img, 'steps');
		delete steps.field; // a pipeline that forgot json_schema_extra
		expect(widgetFor('steps', steps)).toMatchObject({ kind: 'number', type: 'integer', min: 1, max: 15, step: 1, default: 4 });
		const odd = { ...prop(img2img, 'steps'), field: 'knob' }; // a kind this page does not know
		expect(widgetFor('steps', odd).kind).toBe('number');
	});

	it('reads pydantic bounds (minimum/maximum) when the min/max extras are missing', () => {
		const steps = prop(img2img, 'steps');
		delete steps.min; // only the keys pydantic writes itself (ge=1, le=15)
		delete steps.max;
		expect(widgetFor('steps', steps)).toMatchObject({ min: 1, max: 15 });
	});

	it('an Optional float (anyOf number/null) is a number', () => {
		const g = prop(img2img, 'guidance_scale');
		delete g.type; // what pydantic writes for `float | None`
		g.anyOf = [{ type: 'number' }, { type: 'null' }];
		expect(widgetFor('guidance_scale', g)).toMatchObject({ type: 'number', kind: 'range', default: 0.2 });
	});

	it('gives a float slider without a step a fine one (a hundredth of the range or finer)', () => {
		const strength = prop(img2img, 'strength');
		delete strength.step; // a pipeline that gave no step
		expect(widgetFor('strength', strength).step).toBe(0.001);
	});

	it('sends a parameter under its `id` when that differs from its key', () => {
		const steps = prop(img2img, 'steps');
		steps.id = 'num_inference_steps'; // every real id equals its key
		expect(widgetFor('steps', steps).id).toBe('num_inference_steps');
		delete steps.id;
		expect(widgetFor('steps', steps).id).toBe('steps');
	});

	it('names a parameter without a title after its key', () => {
		const g = prop(img2img, 'guidance_scale');
		delete g.title;
		expect(widgetFor('guidance_scale', g).title).toBe('Guidance scale');
	});
});

describe('sanitizeValue (what a typed, stored or tampered value becomes)', () => {
	const ws = buildWidgets(img2img.input_params);
	const w = (id: string) => widget(ws, id);

	it('clamps to the bounds, rounds integers and snaps to the step', () => {
		expect(sanitizeValue(w('steps'), 100000)).toBe(15);
		expect(sanitizeValue(w('steps'), '3.6')).toBe(4);
		expect(sanitizeValue(w('steps'), -5)).toBe(1);
		expect(sanitizeValue(w('guidance_scale'), 0.123456)).toBe(0.12);
		expect(sanitizeValue(w('strength'), 0.05)).toBe(0.1);
		expect(sanitizeValue(w('strength'), '0.734')).toBe(0.73);
		expect(sanitizeValue(w('width'), 65536)).toBe(1024);
		expect(sanitizeValue(w('width'), 517)).toBe(520);
		expect(sanitizeValue(w('width'), 300)).toBe(304);
	});

	it('falls back to the default for unusable values', () => {
		expect(sanitizeValue(w('steps'), 'abc')).toBe(4);
		expect(sanitizeValue(w('steps'), null)).toBe(4);
		expect(sanitizeValue(w('steps'), '')).toBe(4);
		expect(sanitizeValue(w('strength'), Infinity)).toBe(0.5);
		expect(sanitizeValue(w('prompt'), { a: 1 })).toBe(img2img.input_params.properties!.prompt.default);
	});

	it('reads a checkbox from a boolean or its text, else its default', () => {
		const debug = widget(buildWidgets(controlnetCanny.input_params), 'debug_canny');
		expect(sanitizeValue(debug, true)).toBe(true);
		expect(sanitizeValue(debug, 'true')).toBe(true);
		expect(sanitizeValue(debug, 'false')).toBe(false);
		expect(sanitizeValue(debug, 'maybe')).toBe(false);
	});

	it('keeps seeds whole, in 0 … 2^32-1, but not on a step grid', () => {
		expect(sanitizeValue(w('seed'), 12345.4)).toBe(12345);
		expect(sanitizeValue(w('seed'), -1)).toBe(0);
		expect(sanitizeValue(w('seed'), 2 ** 32)).toBe(4294967295);
		expect(sanitizeValue(w('seed'), 3_000_000_001)).toBe(3_000_000_001);
	});

	it('cuts a prompt to the 1000 characters the server accepts', () => {
		expect(sanitizeValue(w('prompt'), 'x'.repeat(1001))).toBe('x'.repeat(1000));
		expect(sanitizeValue(w('prompt'), 'a cat')).toBe('a cat');
	});
});

describe('mergeValues (stored values over the defaults)', () => {
	const ws = buildWidgets(controlnetCanny.input_params);

	it('keeps good stored values, repairs bad ones and drops parameters the pipeline no longer has', () => {
		const v = mergeValues(ws, { prompt: 'a dog', steps: 99, unknown: 1, debug_canny: 'x', width: 640, canny_low: 50 });
		expect(v).toEqual({ ...defaultValues(ws), prompt: 'a dog', steps: 15, width: 640, canny_low: 50 });
		expect('unknown' in v).toBe(false);
	});

	it('gives the defaults when nothing usable was stored', () => {
		const defaults = defaultValues(ws);
		expect(defaults.prompt).toBe('a futuristic city street at night, neon lights, highly detailed');
		expect(mergeValues(ws, 'nope')).toEqual(defaults);
		expect(mergeValues(ws, null)).toEqual(defaults);
	});
});

describe('helpers', () => {
	it('reads the input mode and the title of the pipeline', () => {
		expect(inputMode(txt2img)).toBe('text');
		expect(inputMode(img2img)).toBe('image');
		expect(inputMode(null)).toBe('image');
		expect(pipelineTitle(txt2img)).toBe('Text-to-Image LCM');
		expect(pipelineTitle(controlnetCanny)).toBe('ControlNet Canny LCM');
		expect(pipelineTitle(null)).toBe('Live Diffusion');
	});

	it('computes the capture size from width/height', () => {
		expect(captureSize({ width: 512, height: 768 })).toEqual({ width: 512, height: 768 });
		expect(captureSize({})).toEqual({ width: 512, height: 512 });
		expect(captureSize({ width: 517, height: -3 })).toEqual({ width: 520, height: 512 });
	});

	it('draws random seeds over the whole range of the seed widget', () => {
		const seed = widget(buildWidgets(img2img.input_params), 'seed');
		expect(randomSeed(seed, () => 0)).toBe(0);
		expect(randomSeed(seed, () => 0.5)).toBe(2 ** 31);
		expect(randomSeed(seed, () => 1 - 2 ** -40)).toBe(4294967295);
		// Without a seed widget: 0 … 2^31-1.
		expect(randomSeed(undefined, () => 0.5)).toBe(1073741824);
	});

	it('counts step decimals', () => {
		expect(stepDecimals(0.01)).toBe(2);
		expect(stepDecimals(1)).toBe(0);
		expect(stepDecimals(1e-7)).toBe(7);
		expect(stepDecimals(undefined)).toBe(0);
	});
});
