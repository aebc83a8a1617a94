import { describe, expect, it } from 'vitest';
import { isTypingTarget, presetKeyOf, shortcutOf } from './shortcuts';

const el = (tagName: string, extra: Record<string, unknown> = {}) => ({ tagName, ...extra }) as unknown as HTMLElement;

function press(key: string, target: unknown = el('BODY'), extra: Record<string, unknown> = {}) {
	return shortcutOf({
		key,
		code: key === ' ' ? 'Space' : `Key${key.toUpperCase()}`,
		target: target as EventTarget,
		defaultPrevented: false,
		ctrlKey: false,
		metaKey: false,
		altKey: false,
		repeat: false,
		...extra
	});
}

describe('shortcutOf', () => {
	it('Space starts or stops, F (either case) toggles fullscreen', () => {
		expect(press(' ')).toBe('start-stop');
		expect(press('f')).toBe('fullscreen');
		expect(press('F')).toBe('fullscreen');
		expect(press('g')).toBeNull();
	});

	it('leaves the keys to a field being typed in', () => {
		for (const t of [el('TEXTAREA'), el('SELECT'), el('INPUT', { type: 'text' }), el('INPUT', { type: 'number' }), el('DIV', { isContentEditable: true })]) {
			expect(press(' ', t)).toBeNull();
			expect(press('f', t)).toBeNull();
		}
	});

	it('leaves Space to the controls it activates, but F still works there', () => {
		for (const t of [el('BUTTON'), el('SUMMARY'), el('A'), el('INPUT', { type: 'checkbox' }), el('INPUT', { type: 'range' })]) {
			expect(press(' ', t)).toBeNull();
			expect(press('f', t)).toBe('fullscreen');
		}
	});

	it('ignores presses with a modifier, repeats and handled events', () => {
		expect(press('f', undefined, { ctrlKey: true })).toBeNull(); // the browser's find
		expect(press('f', undefined, { metaKey: true })).toBeNull();
		expect(press(' ', undefined, { altKey: true })).toBeNull();
		expect(press(' ', undefined, { repeat: true })).toBeNull();
		expect(press(' ', undefined, { defaultPrevented: true })).toBeNull();
	});

	it('works without a target element', () => {
		expect(press(' ', null)).toBe('start-stop');
	});
});

describe('isTypingTarget', () => {
	it('knows the input types that take no text', () => {
		expect(isTypingTarget(el('INPUT', { type: 'range' }))).toBe(false);
		expect(isTypingTarget(el('INPUT', { type: 'search' }))).toBe(true);
		expect(isTypingTarget(null)).toBe(false);
	});
});

describe('presetKeyOf', () => {
	const key = (k: string, code: string, target: unknown = el('BODY'), extra: Record<string, unknown> = {}) =>
		presetKeyOf({
			key: k,
			code,
			target: target as EventTarget,
			defaultPrevented: false,
			ctrlKey: false,
			metaKey: false,
			altKey: false,
			repeat: false,
			...extra
		});

	it('recalls presets 1-9 with the digit keys and the number pad; 0 and letters recall nothing', () => {
		expect(key('1', 'Digit1')).toBe(1);
		expect(key('9', 'Digit9')).toBe(9);
		expect(key('5', 'Numpad5')).toBe(5);
		expect(key('0', 'Digit0')).toBeNull();
		expect(key('f', 'KeyF')).toBeNull();
		expect(key('End', 'Numpad1')).toBeNull(); // the number pad without Num Lock
	});

	it('finds the digit keys by position where the layout types something else there (AZERTY)', () => {
		expect(key('&', 'Digit1')).toBe(1);
		expect(key('ç', 'Digit9')).toBe(9);
	});

	it('leaves digits to a field being typed in, but not to a slider or a checkbox', () => {
		for (const t of [el('TEXTAREA'), el('INPUT', { type: 'text' }), el('INPUT', { type: 'number' }), el('SELECT')]) {
			expect(key('3', 'Digit3', t)).toBeNull();
		}
		expect(key('3', 'Digit3', el('INPUT', { type: 'range' }))).toBe(3);
		expect(key('3', 'Digit3', el('BUTTON'))).toBe(3);
	});

	it('ignores presses with a modifier, repeats and handled events', () => {
		expect(key('1', 'Digit1', undefined, { ctrlKey: true })).toBeNull(); // the browser's tab 1
		expect(key('1', 'Digit1', undefined, { altKey: true })).toBeNull();
		expect(key('1', 'Digit1', undefined, { metaKey: true })).toBeNull();
		expect(key('1', 'Digit1', undefined, { repeat: true })).toBeNull();
		expect(key('1', 'Digit1', undefined, { defaultPrevented: true })).toBeNull();
	});
});
