import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import img2imgJson from './fixtures/settings/img2img.json';
import { NoticeBoard } from './notice-board.svelte';
import { PRESET_NAME_MAX, presetName, presetsForServer, readPresets, type Preset } from './presets';
import { Presets } from './presets.svelte';
import { buildWidgets, defaultValues, type ParamValues, type Settings } from './schema';

const widgets = buildWidgets((img2imgJson as Settings).input_params);
const defaults = defaultValues(widgets);

describe('presetName', () => {
	it('trims, cuts at the limit the server keeps, and names a blank one after its slot', () => {
		expect(presetName('  Soft  ', 1)).toBe('Soft');
		expect(presetName('x'.repeat(100), 1)).toHaveLength(PRESET_NAME_MAX);
		expect(presetName('   ', 4)).toBe('Preset 4');
	});
});

describe('readPresets', () => {
	it('checks stored values against the controls as they are now', () => {
		const stored = [
			{ name: 'Soft', params: { ...defaults, strength: 0.3, colour: 'red' } }, // a parameter since removed
			null,
			{ name: 'Hard', params: { strength: 7, steps: '3' } } // out of range, a string; the rest since added
		];
		const slots = readPresets(stored, widgets);
		expect(slots).toHaveLength(9);
		expect(slots[0]).toEqual({ name: 'Soft', params: { ...defaults, strength: 0.3 } });
		expect(slots[1]).toBeNull();
		expect(slots[2]).toEqual({ name: 'Hard', params: { ...defaults, strength: 1, steps: 3 } });
		expect(slots.slice(3)).toEqual(Array(6).fill(null));
	});

	it('drops what is not a preset, and what is past slot 9', () => {
		const soft = { name: 'Soft', params: { strength: 0.3 } };
		expect(readPresets([{ name: 3, params: {} }, { name: 'x' }, 'Soft', soft], widgets).map((p) => p?.name ?? null)).toEqual([
			null, null, null, 'Soft', null, null, null, null, null
		]);
		expect(readPresets(Array(12).fill(soft), widgets).filter(Boolean)).toHaveLength(9);
		expect(readPresets({ 1: soft }, widgets)).toEqual(Array(9).fill(null));
	});
});

describe('presetsForServer', () => {
	const soft: Preset = { name: 'Soft', params: { strength: 0.3 } };
	it('lists slot n as item n-1, up to the last filled slot; an empty slot before it has no name and no values', () => {
		expect(presetsForServer([soft, null, null, null, null, null, null, null, null])).toEqual([soft]);
		expect(presetsForServer([null, null, soft, null, null, null, null, null, null])).toEqual([
			{ name: '', params: {} },
			{ name: '', params: {} },
			soft
		]);
		expect(presetsForServer(Array(9).fill(null))).toEqual([]);
		expect(presetsForServer(Array(9).fill(soft))).toHaveLength(9);
	});
});

describe('Presets', () => {
	let items: Map<string, string>;
	beforeEach(() => {
		items = new Map();
		vi.stubGlobal('localStorage', { getItem: (k: string) => items.get(k) ?? null, setItem: (k: string, v: string) => items.set(k, v) });
	});
	afterEach(() => vi.unstubAllGlobals());

	function setup() {
		const notices = new NoticeBoard();
		let current: ParamValues = { ...defaults };
		const applied: ParamValues[] = [];
		const sent: Preset[][] = [];
		const presets = new Presets({
			notices,
			current: () => current,
			apply: (params) => applied.push(params),
			onChange: (list) => sent.push(list)
		});
		presets.load('img2img', widgets);
		return { presets, notices, applied, sent, setCurrent: (v: ParamValues) => (current = v) };
	}

	it('saves the current values into a slot, stores them per pipeline and hands the list on for the server', () => {
		const t = setup();
		t.setCurrent({ ...defaults, strength: 0.3 });
		t.presets.save(2, ' Soft ');
		const soft = { name: 'Soft', params: { ...defaults, strength: 0.3 } };
		expect(t.presets.slots[1]).toEqual(soft);
		expect(t.sent).toEqual([[{ name: '', params: {} }, soft]]);
		expect(JSON.parse(items.get('live-diffusion:v1:presets:img2img')!)).toEqual([null, soft, null, null, null, null, null, null, null]);

		// Read back after a reload; another pipeline has its own.
		const again = setup();
		expect(again.presets.slots[1]).toEqual(soft);
		again.presets.load('txt2img', widgets);
		expect(again.presets.slots).toEqual(Array(9).fill(null));
	});

	it('recalls a slot into the controls; an empty slot says so and changes nothing', () => {
		const t = setup();
		t.setCurrent({ ...defaults, steps: 2 });
		t.presets.save(1, 'Fast');
		t.presets.recall(1);
		expect(t.applied).toEqual([{ ...defaults, steps: 2 }]);
		t.presets.recall(5);
		expect(t.applied).toHaveLength(1);
		expect(t.notices.current).toMatchObject({ key: 'preset-empty', title: 'Preset 5 is empty' });
	});

	it('replaces and deletes, handing each change on', () => {
		const t = setup();
		t.presets.save(1, 'A');
		t.presets.save(1, 'B');
		expect(t.presets.slots[0]?.name).toBe('B');
		t.presets.remove(1);
		expect(t.presets.slots[0]).toBeNull();
		expect(t.sent.map((list) => list.map((p) => p.name))).toEqual([['A'], ['B'], []]);
	});
});
