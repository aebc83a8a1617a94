// The pipeline's presets (stored per pipeline): saved from the current values, recalled by slot
// number; each change goes to the live session too (see App.svelte), for OSC recall.
import type { NoticeBoard } from './notice-board.svelte';
import { emptySlots, presetName, presetsForServer, readPresets, type Preset, type PresetSlots } from './presets';
import { slug, type ParamValues, type Widget } from './schema';
import { load, save } from './storage';

export interface PresetHooks {
	notices: NoticeBoard;
	/** The values in the controls now (saved into a preset). */
	current(): ParamValues;
	/** Puts a recalled preset's values into the controls. */
	apply(params: ParamValues): void;
	/** The presets changed: the list for the server (see `presetsForServer`). */
	onChange(list: Preset[]): void;
}

export class Presets {
	slots = $state.raw<PresetSlots>(emptySlots());
	#hooks: PresetHooks;
	#storageKey = '';

	constructor(hooks: PresetHooks) {
		this.#hooks = hooks;
	}

	/** The stored presets of this pipeline, checked against its controls. */
	load(pipelineName: string, widgets: Widget[]): void {
		this.#storageKey = `presets:${slug(pipelineName)}`;
		this.slots = readPresets(load(this.#storageKey), widgets);
	}

	/** Saves the current values into slot 1-9 (replacing what was there). */
	save(slot: number, name: string): void {
		this.#replace(slot, { name: presetName(name, slot), params: this.#hooks.current() });
	}

	remove(slot: number): void {
		this.#replace(slot, null);
	}

	/** Puts slot 1-9's values into the controls; an empty slot says so and changes nothing. */
	recall(slot: number): void {
		const preset = this.slots[slot - 1];
		if (preset) {
			this.#hooks.apply(preset.params);
			return;
		}
		this.#hooks.notices.show({ key: 'preset-empty', level: 'info', title: `Preset ${slot} is empty`, detail: 'Save the current values into it first.', autoHideMs: 4000 });
	}

	/** The list for the server. */
	forServer(): Preset[] {
		return presetsForServer(this.slots);
	}

	#replace(slot: number, preset: Preset | null): void {
		if (!this.#storageKey) return; // no pipeline yet
		this.slots = this.slots.map((p, i) => (i === slot - 1 ? preset : p));
		save(this.#storageKey, this.slots);
		this.#hooks.onChange(this.forServer());
	}
}
