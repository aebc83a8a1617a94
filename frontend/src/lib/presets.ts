// Presets: parameter values saved under a name in one of nine slots, recalled by slot number (a
// click, keys 1-9, a MIDI note, or OSC `/live/preset <n>` through the server, which gets the list).
import { mergeValues, type ParamValues, type Widget } from './schema';

export const PRESET_SLOTS = 9;
/** The server refuses longer names. */
export const PRESET_NAME_MAX = 64;

export interface Preset {
	name: string;
	params: ParamValues;
}

/** Slot n is index n-1; an empty slot is null. */
export type PresetSlots = (Preset | null)[];

export function emptySlots(): PresetSlots {
	return Array.from({ length: PRESET_SLOTS }, () => null);
}

/** A name the server takes: trimmed and at most PRESET_NAME_MAX characters; `Preset n` when blank. */
export function presetName(name: string, slot: number): string {
	return name.trim().slice(0, PRESET_NAME_MAX) || `Preset ${slot}`;
}

/**
 * Presets read back from storage, their values checked against the pipeline's controls as they are
 * now (a parameter added since takes its default, one removed is dropped).
 */
export function readPresets(stored: unknown, widgets: Widget[]): PresetSlots {
	const slots = emptySlots();
	if (!Array.isArray(stored)) return slots;
	stored.slice(0, PRESET_SLOTS).forEach((p, i) => {
		if (p && typeof p.name === 'string' && p.params && typeof p.params === 'object') {
			slots[i] = { name: presetName(p.name, i + 1), params: mergeValues(widgets, p.params) };
		}
	});
	return slots;
}

/**
 * The list the server keeps for OSC `/live/preset <n>` (item n-1 is slot n): up to the last filled
 * slot, an empty one before it as a preset with no name and no values.
 */
export function presetsForServer(slots: PresetSlots): Preset[] {
	const last = slots.findLastIndex((p) => p !== null);
	return slots.slice(0, last + 1).map((p) => p ?? { name: '', params: {} });
}
