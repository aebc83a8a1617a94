// MIDI controllers in the page (Web MIDI): access asked for on the user's action, "learn" (pick a
// control or a preset slot, then move a knob or press a pad), the mappings stored per pipeline, and
// the devices as they come and go. An unplugged device keeps its mappings for when it is back.
import {
	accepts,
	ccValue,
	parseMidi,
	readMappings,
	sameSource,
	sameTarget,
	withMapping,
	type MidiMapping,
	type MidiMessage,
	type MidiTarget
} from './midi';
import type { NoticeBoard } from './notice-board.svelte';
import { slug, type ParamValue, type Widget } from './schema';
import { load, save } from './storage';

/** unavailable: no Web MIDI in this browser (or on this origin); asking: the browser's prompt is open. */
export type MidiStatus = 'unavailable' | 'off' | 'asking' | 'on' | 'refused';

export interface MidiDevice {
	name: string;
	connected: boolean;
}

export interface MidiHooks {
	notices: NoticeBoard;
	/** The control of a parameter, if the pipeline has it. */
	widget(id: string): Widget | undefined;
	value(id: string): ParamValue | undefined;
	setValue(id: string, value: ParamValue): void;
	recallPreset(slot: number): void;
}

/** The browser's Web MIDI, or null where it has none (not Chromium, or not a secure origin). */
function browserMidi(): (() => Promise<MIDIAccess>) | null {
	if (typeof navigator === 'undefined' || typeof navigator.requestMIDIAccess !== 'function') return null;
	return () => navigator.requestMIDIAccess();
}

export class MidiControl {
	status = $state<MidiStatus>('off');
	/** The inputs seen since access was given, plugged in or not. */
	devices = $state.raw<MidiDevice[]>([]);
	mappings = $state.raw<MidiMapping[]>([]);
	/** Learn mode: a click on a control or preset slot picks it instead of using it. */
	learning = $state(false);
	/** What the next knob or pad is mapped onto (learn mode). */
	learnTarget = $state.raw<MidiTarget | null>(null);
	#hooks: MidiHooks;
	#requestAccess: (() => Promise<MIDIAccess>) | null;
	#storageKey = '';

	/** `requestAccess`: a stand-in for navigator.requestMIDIAccess (tests). */
	constructor(hooks: MidiHooks, requestAccess = browserMidi()) {
		this.#hooks = hooks;
		this.#requestAccess = requestAccess;
		if (!requestAccess) this.status = 'unavailable';
	}

	/** The stored mappings of this pipeline. */
	load(pipelineName: string): void {
		this.#storageKey = `midi:${slug(pipelineName)}`;
		this.mappings = readMappings(load(this.#storageKey));
		this.learnTarget = null;
	}

	/** Asks the browser for MIDI access (on the user's action: it may prompt) and listens to every input. */
	async enable(): Promise<void> {
		if (!this.#requestAccess || this.status === 'asking' || this.status === 'on') return;
		this.status = 'asking';
		let access: MIDIAccess;
		try {
			access = await this.#requestAccess();
		} catch (e) {
			this.status = 'refused';
			const refused = e instanceof DOMException && (e.name === 'SecurityError' || e.name === 'NotAllowedError');
			this.#hooks.notices.show({
				key: 'midi',
				level: 'warning',
				title: refused ? 'MIDI access was refused' : 'MIDI could not be started',
				detail: refused ? "Allow MIDI devices in this site's settings, then press MIDI again." : String(e)
			});
			return;
		}
		access.onstatechange = (e) => this.#onStateChange(e.port);
		const devices: MidiDevice[] = [];
		access.inputs.forEach((input) => {
			const connected = input.state === 'connected';
			devices.push({ name: nameOf(input), connected });
			if (connected) this.#listen(input);
		});
		this.devices = devices;
		this.status = 'on';
	}

	toggleLearning(): void {
		this.learning = !this.learning;
		this.learnTarget = null;
	}

	/** Learn mode: the next knob or pad goes onto this target (picked again: onto nothing). */
	select(target: MidiTarget): void {
		this.learnTarget = this.learnTarget && sameTarget(this.learnTarget, target) ? null : target;
	}

	mappingOf(target: MidiTarget): MidiMapping | undefined {
		return this.mappings.find((m) => sameTarget(m.target, target));
	}

	/** Forgets every mapping of this pipeline. */
	clear(): void {
		this.#setMappings([]);
		this.learnTarget = null;
	}

	#listen(input: MIDIInput): void {
		input.onmidimessage = (e) => this.#onMessage(nameOf(input), e.data);
	}

	#onStateChange(port: MIDIPort | null): void {
		if (port?.type !== 'input') return;
		const name = nameOf(port);
		const connected = port.state === 'connected';
		const known = this.devices.find((d) => d.name === name);
		// Opening a port fires this too (its connection changes): only plugging in and out matter.
		if (known?.connected === connected) return;
		this.devices = known ? this.devices.map((d) => (d === known ? { name, connected } : d)) : [...this.devices, { name, connected }];
		if (connected) {
			this.#listen(port as MIDIInput);
			if (known) this.#hooks.notices.show({ key: 'midi-device', level: 'info', title: `MIDI device back: ${name}`, autoHideMs: 4000 });
			return;
		}
		const mapped = this.mappings.some((m) => m.device === name);
		this.#hooks.notices.show({
			key: 'midi-device',
			level: 'warning',
			title: `MIDI device unplugged: ${name}`,
			detail: `${mapped ? 'Its mappings are kept for when it is back. ' : ''}Nothing else changed: the controls keep their values.`
		});
	}

	#onMessage(device: string, data: Uint8Array | null): void {
		const msg = parseMidi(data);
		if (!msg) return;
		const target = this.learnTarget;
		if (this.learning && target && this.#learn(device, msg, target)) return;
		const mapping = this.mappings.find((m) => m.device === device && sameSource(m.source, msg));
		if (mapping) this.#apply(mapping.target, msg);
	}

	/** Maps the knob or pad onto the target, if it can drive it; the message itself changes nothing. */
	#learn(device: string, msg: MidiMessage, target: MidiTarget): boolean {
		const widget = target.kind === 'param' ? this.#hooks.widget(target.id) : undefined;
		if (!accepts(target, widget, msg.kind)) return false;
		const source = { kind: msg.kind, channel: msg.channel, number: msg.number };
		this.#setMappings(withMapping(this.mappings, { device, source, target }));
		this.learnTarget = null;
		return true;
	}

	#apply(target: MidiTarget, msg: MidiMessage): void {
		if (target.kind === 'preset') {
			if (msg.kind === 'note') this.#hooks.recallPreset(target.slot);
			return;
		}
		const widget = this.#hooks.widget(target.id);
		if (!widget) return; // mapped for a control this pipeline no longer has
		if (msg.kind === 'cc') {
			const value = ccValue(widget, msg.value);
			if (value !== null) this.#hooks.setValue(widget.id, value);
		} else if (widget.kind === 'checkbox') {
			this.#hooks.setValue(widget.id, this.#hooks.value(widget.id) !== true);
		}
	}

	#setMappings(mappings: MidiMapping[]): void {
		this.mappings = mappings;
		if (this.#storageKey) save(this.#storageKey, mappings);
	}
}

function nameOf(port: MIDIPort): string {
	return port.name || port.id || 'MIDI device';
}
