"""Pictures a person can look at (PIL only): confusion matrices, prediction and sample grids, spectrograms."""

import numpy as np
from PIL import Image, ImageDraw


def confusion_matrix_png(path, labels, predictions, num_classes, title="", cell=36):
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    margin, top = 40, 40
    size = (margin + cell * num_classes + 10, top + margin + cell * num_classes)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((5, 5), title, fill="black")
    draw.text((margin, top - 14), "predicted ->   (rows: true class)", fill="black")
    row_sums = np.maximum(counts.sum(1, keepdims=True), 1)
    for i in range(num_classes):
        draw.text((5, top + 14 + i * cell + cell // 3), str(i), fill="black")
        draw.text((margin + i * cell + cell // 3, top + 2), str(i), fill="black")
        for j in range(num_classes):
            share = counts[i, j] / row_sums[i, 0]
            shade = int(255 * (1 - share))
            color = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = margin + j * cell, top + 14 + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color, outline="gray")
            if counts[i, j]:
                draw.text((x0 + 4, y0 + cell // 3), str(counts[i, j]), fill="white" if share > 0.5 else "black")
    img.save(path)


def prediction_grid_png(path, images, labels, predictions, columns=8, scale=4):
    """Images with a green (right) or red (wrong) frame and 'label/prediction' under each."""
    h, w = images[0].shape[:2]
    ch, cw = h * scale + 18, w * scale + 6
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cw, rows * ch), "white")
    draw = ImageDraw.Draw(grid)
    for k, (im, y, p) in enumerate(zip(images, labels, predictions)):
        r, c = divmod(k, columns)
        x0, y0 = c * cw, r * ch
        color = (0, 160, 0) if y == p else (220, 0, 0)
        draw.rectangle([x0, y0, x0 + cw - 1, y0 + h * scale + 5], fill=color)
        grid.paste(
            Image.fromarray(np.asarray(im, np.uint8)).resize((w * scale, h * scale), Image.NEAREST), (x0 + 3, y0 + 3)
        )
        draw.text((x0 + 3, y0 + h * scale + 6), f"{int(y)}/{int(p)}", fill=color)
    grid.save(path)


def sample_grid_png(path, samples, columns, title="", row_labels=None, scale=None):
    """Generated images in [-1, 1] (N, H, W, C with C 1 or 3), `columns` per row, a label before each row."""
    images = np.clip(np.round((np.asarray(samples, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = images.repeat(3, axis=-1)
    h, w = images.shape[1:3]
    scale = scale or max(1, 64 // max(h, w))
    rows = (len(images) + columns - 1) // columns
    left, top, pad = 24, 18, 2
    cw, ch = w * scale + pad, h * scale + pad
    grid = Image.new("RGB", (left + columns * cw, top + rows * ch), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((2, 2), title, fill="black")
    for r in range(rows):
        label = row_labels[r] if row_labels is not None else r
        draw.text((4, top + r * ch + ch // 3), str(label), fill="black")
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        tile = Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (left + c * cw, top + r * ch))
    grid.save(path)


def _heat(values):
    """Values in [0, 1] -> RGB: black, through purple and orange, to pale yellow."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], np.float64)
    position = v * (len(stops) - 1)
    low = np.minimum(position.astype(int), len(stops) - 2)
    frac = position - low
    return (stops[low[..., 0]] * (1 - frac) + stops[low[..., 0] + 1] * frac).astype(np.uint8)


def alignment_png(path, log_mel, spans, title="", ms_per_frame=10, scale=3):
    """A log-mel spectrogram (frames, bins), low bins at the bottom, with each (token,
    start_ms, end_ms) span marked and labelled underneath, over a time axis in seconds.
    The picture is as wide as its last label needs."""
    log_mel = np.asarray(log_mel, np.float64)
    low, high = np.percentile(log_mel, 5), np.percentile(log_mel, 99.5)
    picture = _heat((log_mel - low) / max(high - low, 1e-6)).transpose(1, 0, 2)[::-1]
    frames, bins = log_mel.shape
    left, top, labels, axis = 34, 18, 32, 18
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ends = [left + start / ms_per_frame * scale + 1 + measure.textlength(token) for token, start, _ in spans]
    width = int(max([left + frames * scale, measure.textlength(title) + 4, *ends])) + 4
    height = top + bins * 2 + labels + axis
    img = Image.new("RGB", (width, height), "white")
    img.paste(
        Image.fromarray(np.ascontiguousarray(picture)).resize((frames * scale, bins * 2), Image.NEAREST), (left, top)
    )
    draw = ImageDraw.Draw(img)
    draw.text((2, 2), title, fill="black")
    draw.text((2, top + bins - 6), "mel", fill="black")
    for k, (token, start, end) in enumerate(spans):
        x0, x1 = left + start / ms_per_frame * scale, left + end / ms_per_frame * scale
        draw.line([(x0, top), (x0, top + bins * 2)], fill="white")
        y = top + bins * 2 + 4 + 14 * (k % 2)  # alternate rows so neighbours do not overlap
        draw.line([(x0, y - 2), (max(x0, x1 - 1), y - 2)], fill=(0, 90, 200), width=2)
        draw.text((x0 + 1, y), token, fill="black")
    y = top + bins * 2 + labels
    draw.line([(left, y), (left + frames * scale, y)], fill="black")
    seconds = frames * ms_per_frame / 1000
    for tick in np.arange(0.0, seconds + 1e-9, 0.5):
        x = left + tick * 1000 / ms_per_frame * scale
        draw.line([(x, y), (x, y + 3)], fill="black")
        draw.text((x + 1, y + 4), f"{tick:g} s", fill="black")
    img.save(path)


def spectrograms_png(path, rows, title="", scale=2):
    """Log-mel spectrograms (frames, bins) stacked top to bottom, each labelled, low bins at the
    bottom, on one shared colour scale (so a worse reconstruction looks different, not rescaled)."""
    values = np.concatenate([np.asarray(m, np.float64).ravel() for _, m in rows])
    low, high = np.percentile(values, 5), np.percentile(values, 99.5)
    width = max(m.shape[0] for _, m in rows) * scale
    label, top = 14, 18
    height = top + sum(label + m.shape[1] * scale for _, m in rows)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((2, 2), title, fill="black")
    y = top
    for name, m in rows:
        draw.text((2, y), name, fill="black")
        y += label
        picture = _heat((np.asarray(m, np.float64) - low) / max(high - low, 1e-6)).transpose(1, 0, 2)[::-1]
        tile = Image.fromarray(np.ascontiguousarray(picture)).resize(
            (m.shape[0] * scale, m.shape[1] * scale), Image.NEAREST
        )
        img.paste(tile, (0, y))
        y += m.shape[1] * scale
    img.save(path)
