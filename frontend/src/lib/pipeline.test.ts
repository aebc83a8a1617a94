import { describe, expect, it } from 'vitest';
import img2imgJson from './fixtures/settings/img2img.json';
import { Pipeline } from './pipeline.svelte';
import { buildWidgets, defaultValues, type Settings } from './schema';

describe('Pipeline.setValues', () => {
	it('takes values set from elsewhere (a preset, OSC through the server), each checked against its control; the others stay', () => {
		const pipeline = new Pipeline();
		pipeline.settings = img2imgJson as Settings;
		const defaults = defaultValues(buildWidgets(pipeline.settings.input_params));
		pipeline.values = { ...defaults, prompt: 'typed here' };
		pipeline.setValues({ strength: 0.7, steps: 99, colour: 'red' });
		expect(pipeline.values).toEqual({ ...defaults, prompt: 'typed here', strength: 0.7, steps: 15 });
	});
});
