// MIDI messages and their mappings onto the page's controls: which message moved what (a control
// change or a note on, from one device, on one channel), and what a value means for a control.
import { sanitizeValue, type ParamValue, type Widget } from './schema';

/** Where a message comes from on its device: a knob or fader (control change) or a pad or key (note on). */
export interface MidiSource {
	kind: 'cc' | 'note';
	/** 1 to 16, as devices and manuals number them. */
	channel: number;
	/** The controller or note number, 0 to 127. */
	number: number;
}

/** A control change with its value, or a note on with its velocity (0 to 127). */
export interface MidiMessage extends MidiSource {
	value: number;
}

/** What a message is mapped onto: a parameter's control, or a preset slot (1 to 9). */
export type MidiTarget = { kind: 'param'; id: string } | { kind: 'preset'; slot: number };

export interface MidiMapping {
	/** The input's name: the same device is found again when it is plugged back in. */
	device: string;
	source: MidiSource;
	target: MidiTarget;
}

/** A control change or a note on, or null for anything else (note off, clock, sysex…). */
export function parseMidi(data: ArrayLike<number> | null | undefined): MidiMessage | null {
	if (!data || data.length < 3) return null;
	const type = data[0] & 0xf0;
	const channel = (data[0] & 0x0f) + 1;
	const number = data[1] & 0x7f;
	const value = data[2] & 0x7f;
	if (type === 0xb0) return { kind: 'cc', channel, number, value };
	// A note on with velocity 0 is a note off (running status).
	if (type === 0x90 && value > 0) return { kind: 'note', channel, number, value };
	return null;
}

export function sameSource(a: MidiSource, b: MidiSource): boolean {
	return a.kind === b.kind && a.channel === b.channel && a.number === b.number;
}

export function sameTarget(a: MidiTarget, b: MidiTarget): boolean {
	if (a.kind === 'param' && b.kind === 'param') return a.id === b.id;
	if (a.kind === 'preset' && b.kind === 'preset') return a.slot === b.slot;
	return false;
}

/** "CC 21 · ch 1", "Note 36 · ch 10". */
export function sourceLabel(s: MidiSource): string {
	return `${s.kind === 'cc' ? 'CC' : 'Note'} ${s.number} · ch ${s.channel}`;
}

/** Whether a MIDI knob, fader or pad can drive this control: a number with bounds, a choice or a toggle. */
export function learnable(w: Widget): boolean {
	if (w.kind === 'checkbox') return true;
	if (w.kind === 'select') return (w.options?.length ?? 0) > 0;
	return (w.type === 'number' || w.type === 'integer') && w.min !== undefined && w.max !== undefined && w.max > w.min;
}

/** Whether a message of this kind can drive the target: notes toggle and recall presets, control changes move anything but presets. */
export function accepts(target: MidiTarget, w: Widget | undefined, kind: MidiSource['kind']): boolean {
	if (target.kind === 'preset') return kind === 'note';
	if (!w || !learnable(w)) return false;
	return kind === 'cc' || w.kind === 'checkbox';
}

/**
 * The control's value for a control change: 0..127 spread over min..max on the control's step, a
 * choice among the options, or on from 64 for a toggle.
 */
export function ccValue(w: Widget, cc: number): ParamValue | null {
	const fraction = Math.min(127, Math.max(0, cc)) / 127;
	if (w.kind === 'checkbox') return cc >= 64;
	if (w.kind === 'select') {
		const options = w.options ?? [];
		return options.length ? options[Math.round(fraction * (options.length - 1))] : null;
	}
	if (!learnable(w)) return null;
	return sanitizeValue(w, w.min! + fraction * (w.max! - w.min!));
}

function validSource(s: unknown): s is MidiSource {
	const o = s as MidiSource | null;
	return (
		!!o &&
		(o.kind === 'cc' || o.kind === 'note') &&
		Number.isInteger(o.channel) &&
		o.channel >= 1 &&
		o.channel <= 16 &&
		Number.isInteger(o.number) &&
		o.number >= 0 &&
		o.number <= 127
	);
}

function validTarget(t: unknown): t is MidiTarget {
	const o = t as { kind?: unknown; id?: unknown; slot?: unknown } | null;
	if (o?.kind === 'param') return typeof o.id === 'string' && o.id !== '';
	if (o?.kind === 'preset') return Number.isInteger(o.slot) && (o.slot as number) >= 1 && (o.slot as number) <= 9;
	return false;
}

/** Mappings read back from storage (or an older page): anything malformed is dropped. */
export function readMappings(stored: unknown): MidiMapping[] {
	if (!Array.isArray(stored)) return [];
	return stored
		.filter((m) => m && typeof m.device === 'string' && validSource(m.source) && validTarget(m.target))
		.map((m) => ({
			device: m.device,
			source: { kind: m.source.kind, channel: m.source.channel, number: m.source.number },
			target: m.target.kind === 'param' ? { kind: 'param', id: m.target.id } : { kind: 'preset', slot: m.target.slot }
		}));
}

/** The mappings with this one added: it replaces any of the same knob or pad, and any of the same target. */
export function withMapping(mappings: MidiMapping[], added: MidiMapping): MidiMapping[] {
	const kept = mappings.filter(
		(m) => !(m.device === added.device && sameSource(m.source, added.source)) && !sameTarget(m.target, added.target)
	);
	return [...kept, added];
}
