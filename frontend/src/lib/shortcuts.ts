// The main page's keyboard shortcuts: Space starts or stops, F toggles fullscreen on the output, 1-9
// recall presets. None fires while the user types, nor with a modifier (browser shortcuts such as Ctrl+F).

export type Shortcut = 'start-stop' | 'fullscreen';

type Key = Pick<KeyboardEvent, 'key' | 'code' | 'target' | 'defaultPrevented' | 'ctrlKey' | 'metaKey' | 'altKey' | 'repeat'>;

/** Input types that take no typed text: Space, F and digits mean nothing to them. */
const NOT_TYPED = ['range', 'checkbox', 'radio', 'button', 'submit', 'reset', 'file', 'color'];
/** Elements that act on Space themselves. */
const SPACE_ACTIVATES = ['BUTTON', 'INPUT', 'SUMMARY', 'A'];

/** Whether keys typed on `t` go into text. */
export function isTypingTarget(t: EventTarget | null): boolean {
	const el = t as HTMLElement | null;
	if (!el || !el.tagName) return false;
	if (el.isContentEditable) return true;
	if (el.tagName === 'TEXTAREA' || el.tagName === 'SELECT') return true;
	if (el.tagName === 'INPUT') return !NOT_TYPED.includes((el as HTMLInputElement).type);
	return false;
}

/** The shortcut a key press means, or null; the caller then prevents the default. */
export function shortcutOf(e: Key): Shortcut | null {
	if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return null;
	const t = e.target as HTMLElement | null;
	if (e.key === ' ' || e.code === 'Space') {
		if (isTypingTarget(t) || (t && SPACE_ACTIVATES.includes(t.tagName))) return null;
		return 'start-stop';
	}
	if (e.key === 'f' || e.key === 'F') return isTypingTarget(t) ? null : 'fullscreen';
	return null;
}

/**
 * The preset slot (1-9) a key press recalls, or null: the digit keys above the letters, by their
 * position (also where a layout needs Shift for digits, as AZERTY does), or any key that types a digit
 * (the number pad).
 */
export function presetKeyOf(e: Key): number | null {
	if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || e.repeat || isTypingTarget(e.target)) return null;
	const digit = /^Digit([1-9])$/.exec(e.code)?.[1] ?? (/^[1-9]$/.test(e.key) ? e.key : null);
	return digit ? Number(digit) : null;
}
