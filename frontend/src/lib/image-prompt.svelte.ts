// The image prompt of IP-Adapter pipelines: a picture the user dropped or chose (or an output they
// liked), scaled down and kept as a JPEG; sent once per change, never with each frame.

/** The longer side the picture is scaled to: the adapter's image encoder looks at 224 px. */
export const IMAGE_PROMPT_MAX_SIDE = 512;

export class ImagePrompt {
	/** The JPEG to send, or null when the camera frame is the image prompt. */
	jpeg = $state<Blob | null>(null);
	/** A URL of the JPEG for the preview. */
	previewUrl = $state('');
	/** Why the last picture could not be used, or ''. */
	problem = $state('');
	#onChange: (jpeg: Blob | null) => void;

	constructor(onChange: (jpeg: Blob | null) => void) {
		this.#onChange = onChange;
	}

	/** A picture file (or the output's JPEG): scaled down to IMAGE_PROMPT_MAX_SIDE, re-encoded as JPEG. */
	async set(picture: Blob): Promise<void> {
		let bitmap: ImageBitmap;
		try {
			bitmap = await createImageBitmap(picture);
		} catch {
			this.problem = 'That file is not a picture this browser can read';
			return;
		}
		const scale = Math.min(1, IMAGE_PROMPT_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
		const canvas = document.createElement('canvas');
		canvas.width = Math.max(1, Math.round(bitmap.width * scale));
		canvas.height = Math.max(1, Math.round(bitmap.height * scale));
		canvas.getContext('2d')?.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
		bitmap.close();
		const jpeg = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.9));
		if (!jpeg) {
			this.problem = 'The picture could not be encoded';
			return;
		}
		this.problem = '';
		this.#replace(jpeg);
	}

	clear(): void {
		this.problem = '';
		this.#replace(null);
	}

	#replace(jpeg: Blob | null): void {
		if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
		this.jpeg = jpeg;
		this.previewUrl = jpeg ? URL.createObjectURL(jpeg) : '';
		this.#onChange(jpeg);
	}
}
