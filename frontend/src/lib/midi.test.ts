import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
// The real settings of two pipelines (see schema.test.ts): a slider, a number grid of 8, a choice, a toggle.
import depthHyperSdxlJson from './fixtures/settings/controlnetDepthHyperSDXL.json';
import img2imgJson from './fixtures/settings/img2img.json';
import {
	accepts,
	ccValue,
	learnable,
	parseMidi,
	readMappings,
	sourceLabel,
	withMapping,
	type MidiMapping
} from './midi';
import { MidiControl } from './midi.svelte';
import { NoticeBoard } from './notice-board.svelte';
import { buildWidgets, defaultValues, type ParamValue, type Settings, type Widget } from './schema';

const img2img = buildWidgets((img2imgJson as Settings).input_params);
const depth = buildWidgets((depthHyperSdxlJson as Settings).input_params);
const widget = (widgets: Widget[], id: string) => widgets.find((w) => w.id === id)!;
const strength = widget(img2img, 'strength'); // 0.1 to 1, step 0.01
const steps = widget(img2img, 'steps'); // 1 to 15, integers
const width = widget(img2img, 'width'); // 256 to 1024, step 8
const guidanceMode = widget(depth, 'guidance_mode'); // full, self, initialize
const debugControl = widget(depth, 'debug_control'); // a checkbox

/** localStorage as a browser has it, for the storage of mappings. */
function fakeStorage() {
	const items = new Map<string, string>();
	return {
		getItem: (k: string) => items.get(k) ?? null,
		setItem: (k: string, v: string) => void items.set(k, v),
		removeItem: (k: string) => void items.delete(k),
		items
	};
}

describe('parseMidi', () => {
	it('reads control changes and notes on, with channels numbered 1 to 16', () => {
		expect(parseMidi(new Uint8Array([0xb0, 21, 64]))).toEqual({ kind: 'cc', channel: 1, number: 21, value: 64 });
		expect(parseMidi([0xbf, 7, 127])).toEqual({ kind: 'cc', channel: 16, number: 7, value: 127 });
		expect(parseMidi([0x99, 36, 100])).toEqual({ kind: 'note', channel: 10, number: 36, value: 100 });
	});

	it('ignores notes off (also as a note on of velocity 0) and everything else', () => {
		expect(parseMidi([0x90, 36, 0])).toBeNull();
		expect(parseMidi([0x80, 36, 64])).toBeNull();
		expect(parseMidi([0xe0, 0, 64])).toBeNull(); // pitch bend
		expect(parseMidi([0xf8])).toBeNull(); // clock
		expect(parseMidi(new Uint8Array(0))).toBeNull();
		expect(parseMidi(null)).toBeNull();
	});

	it('labels a source as a manual would', () => {
		expect(sourceLabel({ kind: 'cc', channel: 1, number: 21 })).toBe('CC 21 · ch 1');
		expect(sourceLabel({ kind: 'note', channel: 10, number: 36 })).toBe('Note 36 · ch 10');
	});
});

describe('ccValue', () => {
	it("spreads 0..127 over the control's range, on its step", () => {
		expect(ccValue(strength, 0)).toBe(0.1);
		expect(ccValue(strength, 127)).toBe(1);
		expect(ccValue(strength, 64)).toBe(0.55); // 0.1 + 64/127 * 0.9 = 0.5535
		expect(ccValue(steps, 0)).toBe(1);
		expect(ccValue(steps, 64)).toBe(8); // 1 + 64/127 * 14 = 8.06
		expect(ccValue(steps, 127)).toBe(15);
		expect(ccValue(width, 1)).toBe(264); // 256 + 1/127 * 768 = 262.0, on the grid of 8
		expect(ccValue(width, 100)).toBe(864); // 256 + 100/127 * 768 = 860.7
		expect(ccValue(width, 127)).toBe(1024);
	});

	it('turns a toggle on from 64, and picks a choice', () => {
		expect(ccValue(debugControl, 63)).toBe(false);
		expect(ccValue(debugControl, 64)).toBe(true);
		expect(ccValue(guidanceMode, 0)).toBe('full');
		expect(ccValue(guidanceMode, 64)).toBe('self');
		expect(ccValue(guidanceMode, 127)).toBe('initialize');
	});

	it('has no value for a text', () => {
		expect(ccValue(widget(img2img, 'prompt'), 64)).toBeNull();
	});
});

describe('learnable and accepts', () => {
	it('takes bounded numbers, choices and toggles, not texts', () => {
		expect(img2img.filter(learnable).map((w) => w.id)).toEqual(['seed', 'steps', 'guidance_scale', 'strength', 'temporal_consistency', 'width', 'height']);
		expect(learnable(guidanceMode)).toBe(true);
		expect(learnable(debugControl)).toBe(true);
	});

	it('notes toggle and recall presets; control changes move anything but presets', () => {
		expect(accepts({ kind: 'param', id: 'strength' }, strength, 'cc')).toBe(true);
		expect(accepts({ kind: 'param', id: 'strength' }, strength, 'note')).toBe(false);
		expect(accepts({ kind: 'param', id: 'debug_control' }, debugControl, 'note')).toBe(true);
		expect(accepts({ kind: 'param', id: 'debug_control' }, debugControl, 'cc')).toBe(true);
		expect(accepts({ kind: 'preset', slot: 3 }, undefined, 'note')).toBe(true);
		expect(accepts({ kind: 'preset', slot: 3 }, undefined, 'cc')).toBe(false);
		expect(accepts({ kind: 'param', id: 'gone' }, undefined, 'cc')).toBe(false);
	});
});

describe('mappings', () => {
	const knob: MidiMapping = { device: 'nanoKONTROL2', source: { kind: 'cc', channel: 1, number: 0 }, target: { kind: 'param', id: 'strength' } };

	it('a new mapping replaces one of the same knob on the same device, and one of the same target', () => {
		const pad: MidiMapping = { device: 'nanoKONTROL2', source: { kind: 'note', channel: 1, number: 36 }, target: { kind: 'preset', slot: 1 } };
		const sameKnob = { ...knob, target: { kind: 'param', id: 'steps' } } as MidiMapping;
		expect(withMapping([knob, pad], sameKnob)).toEqual([pad, sameKnob]);
		const otherKnob = { ...knob, source: { kind: 'cc', channel: 1, number: 1 } } as MidiMapping;
		expect(withMapping([knob, pad], otherKnob)).toEqual([pad, otherKnob]);
		const otherDevice = { ...knob, device: 'Launchpad', target: { kind: 'param', id: 'steps' } } as MidiMapping;
		expect(withMapping([knob], otherDevice)).toEqual([knob, otherDevice]);
	});

	it('reads stored mappings back, dropping malformed ones', () => {
		const stored = [
			knob,
			{ ...knob, source: { kind: 'cc', channel: 0, number: 1 } },
			{ ...knob, source: { kind: 'pitch', channel: 1, number: 1 } },
			{ ...knob, target: { kind: 'preset', slot: 10 } },
			{ ...knob, target: { kind: 'param', id: '' } },
			{ source: knob.source, target: knob.target },
			null
		];
		expect(readMappings(stored)).toEqual([knob]);
		expect(readMappings({ knob })).toEqual([]);
		expect(readMappings(null)).toEqual([]);
	});
});

// ------------------------------------------------------------------ MidiControl with a fake device
/** A MIDI input as Chromium has it: it stays in `inputs` when unplugged, its state "disconnected". */
class FakeInput {
	type = 'input';
	state = 'connected';
	onmidimessage: ((e: { data: Uint8Array }) => void) | null = null;
	constructor(
		public name: string,
		public id = name
	) {}
	send(bytes: number[]) {
		this.onmidimessage?.({ data: new Uint8Array(bytes) });
	}
}

class FakeAccess {
	inputs = new Map<string, FakeInput>();
	onstatechange: ((e: { port: FakeInput }) => void) | null = null;
	constructor(...inputs: FakeInput[]) {
		for (const i of inputs) this.inputs.set(i.id, i);
	}
	unplug(input: FakeInput) {
		input.state = 'disconnected';
		this.onstatechange?.({ port: input });
	}
	plug(input: FakeInput) {
		input.state = 'connected';
		this.inputs.set(input.id, input);
		this.onstatechange?.({ port: input });
	}
}

function setup(widgets: Widget[] = [...img2img, debugControl], access = new FakeAccess(new FakeInput('nanoKONTROL2'))) {
	const notices = new NoticeBoard();
	const values: Record<string, ParamValue> = defaultValues(widgets);
	const recalled: number[] = [];
	const midi = new MidiControl(
		{
			notices,
			widget: (id) => widgets.find((w) => w.id === id),
			value: (id) => values[id],
			setValue: (id, v) => (values[id] = v),
			recallPreset: (slot) => recalled.push(slot)
		},
		async () => access as unknown as MIDIAccess
	);
	midi.load('img2img');
	const device = access.inputs.values().next().value!;
	return { midi, notices, values, recalled, access, device };
}

describe('MidiControl', () => {
	let storage: ReturnType<typeof fakeStorage>;
	beforeEach(() => {
		storage = fakeStorage();
		vi.stubGlobal('localStorage', storage);
	});
	afterEach(() => vi.unstubAllGlobals());

	it('says so where the browser has no Web MIDI', () => {
		const midi = new MidiControl({ notices: new NoticeBoard(), widget: () => undefined, value: () => undefined, setValue: () => {}, recallPreset: () => {} }, null);
		expect(midi.status).toBe('unavailable');
	});

	it('asks for access, then lists the inputs and listens to them', async () => {
		const t = setup();
		expect(t.midi.status).toBe('off');
		expect(t.device.onmidimessage).toBeNull(); // nothing before the user asks
		await t.midi.enable();
		expect(t.midi.status).toBe('on');
		expect(t.midi.devices).toEqual([{ name: 'nanoKONTROL2', connected: true }]);
		expect(t.device.onmidimessage).not.toBeNull();
	});

	it('says when access is refused', async () => {
		const notices = new NoticeBoard();
		const midi = new MidiControl({ notices, widget: () => undefined, value: () => undefined, setValue: () => {}, recallPreset: () => {} }, async () => {
			throw new DOMException('Permission denied', 'NotAllowedError');
		});
		await midi.enable();
		expect(midi.status).toBe('refused');
		expect(notices.current?.title).toBe('MIDI access was refused');
	});

	it('learns a knob onto a slider: the knob then moves it over its range', async () => {
		const t = setup();
		await t.midi.enable();
		t.midi.toggleLearning();
		t.midi.select({ kind: 'param', id: 'strength' });
		t.device.send([0x90, 36, 100]); // a pad cannot drive a slider: still waiting
		expect(t.midi.mappings).toEqual([]);
		t.device.send([0xb0, 21, 10]);
		expect(t.midi.learnTarget).toBeNull();
		expect(t.values.strength).toBe(0.5); // the learning message itself changes nothing
		expect(t.midi.mappingOf({ kind: 'param', id: 'strength' })).toEqual({
			device: 'nanoKONTROL2',
			source: { kind: 'cc', channel: 1, number: 21 },
			target: { kind: 'param', id: 'strength' }
		});
		t.device.send([0xb0, 21, 127]);
		expect(t.values.strength).toBe(1);
		t.midi.toggleLearning(); // mappings work in and out of learn mode
		t.device.send([0xb0, 21, 64]);
		expect(t.values.strength).toBe(0.55);
		t.device.send([0xb1, 21, 0]); // another channel: another knob
		expect(t.values.strength).toBe(0.55);
	});

	it('learns pads onto a checkbox (each press toggles it) and onto a preset slot (a press recalls it)', async () => {
		const t = setup();
		await t.midi.enable();
		t.midi.toggleLearning();
		t.midi.select({ kind: 'param', id: 'debug_control' });
		t.device.send([0x99, 40, 100]);
		t.midi.select({ kind: 'preset', slot: 3 });
		t.device.send([0xb0, 1, 127]); // a knob cannot recall a preset: still waiting
		t.device.send([0x99, 36, 100]);
		t.midi.toggleLearning();
		t.device.send([0x99, 40, 90]);
		expect(t.values.debug_control).toBe(true);
		t.device.send([0x89, 40, 0]); // its note off: nothing
		t.device.send([0x99, 40, 0]);
		expect(t.values.debug_control).toBe(true);
		t.device.send([0x99, 40, 90]);
		expect(t.values.debug_control).toBe(false);
		t.device.send([0x99, 36, 127]);
		expect(t.recalled).toEqual([3]);
	});

	it('keeps the mappings per pipeline, and clears them', async () => {
		const t = setup();
		await t.midi.enable();
		t.midi.toggleLearning();
		t.midi.select({ kind: 'param', id: 'steps' });
		t.device.send([0xb0, 22, 1]);
		expect(JSON.parse(storage.items.get('live-diffusion:v1:midi:img2img')!)).toEqual(t.midi.mappings);
		t.midi.load('txt2img');
		expect(t.midi.mappings).toEqual([]);
		t.midi.load('img2img');
		expect(t.midi.mappings).toHaveLength(1);
		t.midi.clear();
		expect(t.midi.mappings).toEqual([]);
		t.midi.load('img2img');
		expect(t.midi.mappings).toEqual([]);
	});

	it('an unplugged device: a notice naming it, and nothing else changes; back, its mappings work again', async () => {
		const t = setup();
		await t.midi.enable();
		t.midi.toggleLearning();
		t.midi.select({ kind: 'param', id: 'strength' });
		t.device.send([0xb0, 21, 0]);
		t.midi.toggleLearning();
		t.device.send([0xb0, 21, 127]);
		const before = { ...t.values };

		t.access.unplug(t.device);
		expect(t.notices.current).toMatchObject({ key: 'midi-device', level: 'warning', title: 'MIDI device unplugged: nanoKONTROL2' });
		expect(t.notices.current?.detail).toBe('Its mappings are kept for when it is back. Nothing else changed: the controls keep their values.');
		expect(t.values).toEqual(before);
		expect(t.midi.mappings).toHaveLength(1);
		expect(t.midi.status).toBe('on');
		expect(t.midi.devices).toEqual([{ name: 'nanoKONTROL2', connected: false }]);
		t.access.onstatechange?.({ port: t.device }); // another event of the same state: said once
		expect(t.midi.devices).toHaveLength(1);

		t.device.onmidimessage = null; // a port plugged back in is closed until listened to again
		t.access.plug(t.device);
		expect(t.notices.current).toMatchObject({ level: 'info', title: 'MIDI device back: nanoKONTROL2' });
		expect(t.midi.devices).toEqual([{ name: 'nanoKONTROL2', connected: true }]);
		t.device.send([0xb0, 21, 0]);
		expect(t.values.strength).toBe(0.1);
	});

	it('listens to a device plugged in for the first time, without a notice; another device has its own mappings', async () => {
		const t = setup();
		await t.midi.enable();
		const other = new FakeInput('Launchpad');
		t.access.plug(other);
		expect(t.midi.devices.map((d) => d.name)).toEqual(['nanoKONTROL2', 'Launchpad']);
		expect(t.notices.current).toBeNull();
		t.midi.toggleLearning();
		t.midi.select({ kind: 'param', id: 'strength' });
		other.send([0xb0, 21, 0]);
		t.device.send([0xb0, 21, 127]); // the same knob number on the first device is not mapped
		expect(t.values.strength).toBe(0.5);
		other.send([0xb0, 21, 127]);
		expect(t.values.strength).toBe(1);
	});
});
