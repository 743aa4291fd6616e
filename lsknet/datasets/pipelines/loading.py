"""Image loading that names the file it cannot decode and always returns 3 channels.

mmdet 2.28's ``LoadImageFromFile`` passes ``None`` on when OpenCV cannot decode a
file, so a truncated image fails later with ``AttributeError: 'NoneType' object has
no attribute 'shape'`` and no file name. With ``color_type='color'`` (the default)
mmcv 1.7 already decodes grayscale and RGBA images to 3 channels and drops the
alpha channel. With ``color_type='unchanged'`` it returns 1, 2 or 4 channels,
which the 3-channel ``Normalize`` and backbones cannot use.
"""
import os.path as osp

import cv2
import mmcv
import numpy as np
from mmdet.datasets.builder import PIPELINES
from mmdet.datasets.pipelines import LoadImageFromFile as MMDetLoadImageFromFile

GRAYSCALE_FLAGS = ('grayscale', 'grayscale_ignore_orientation')


def decode_image(img_bytes: bytes, filename: str, color_type: str = 'color',
                 channel_order: str = 'bgr') -> np.ndarray:
    """Decode image bytes with ``mmcv.imfrombytes`` and check the result.

    Args:
        img_bytes: the encoded file content.
        filename: the file the bytes came from, for the error message.
        color_type: ``flag`` of ``mmcv.imfrombytes``. Unless it is a grayscale
            flag, the result has 3 channels (see :func:`to_three_channels`).
        channel_order: 'bgr' or 'rgb'.

    Returns:
        (H, W, 3) array, or (H, W) for a grayscale ``color_type``.

    Raises:
        OSError: if the bytes are empty, truncated or not an image.
    """
    message = (f'failed to decode image {filename}: the file is truncated or not '
               'an image; re-download or re-split it')
    # OpenCV returns None for a broken file and raises cv2.error for empty input
    # or when converting None to RGB. Pillow raises OSError ("image file is
    # truncated", UnidentifiedImageError), and its PNG plugin raises SyntaxError
    # for broken chunks.
    try:
        img = mmcv.imfrombytes(img_bytes, flag=color_type, channel_order=channel_order)
    except (cv2.error, OSError, SyntaxError) as error:
        raise OSError(message) from error
    if img is None or img.size == 0:
        raise OSError(message)

    if color_type not in GRAYSCALE_FLAGS:
        img = to_three_channels(img, color_type, channel_order)
    return img


def to_three_channels(img: np.ndarray, color_type: str,
                      channel_order: str) -> np.ndarray:
    """Convert a grayscale, gray+alpha or RGBA image to 3 channels.

    Gray is repeated into all three channels and alpha is dropped. With
    ``color_type='unchanged'``, mmcv's cv2 and pillow backends return colour in
    BGR(A) order regardless of ``channel_order``, so the colour channels are
    reordered here when ``channel_order='rgb'``.
    """
    if img.ndim == 2:
        img = img[:, :, None]
    num_channels = img.shape[2]
    if num_channels in (1, 2):
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if color_type == 'unchanged':
        img = img[:, :, :3]
        if channel_order == 'rgb':
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img)
    return img


@PIPELINES.register_module(force=True)
class LoadImageFromFile(MMDetLoadImageFromFile):
    """mmdet's ``LoadImageFromFile`` with a clear error for undecodable files.

    Registered under mmdet's name, so every pipeline built after ``import lsknet``
    uses it. It adds two things to the parent: a file that cannot be decoded
    raises ``OSError`` naming the file, and the image always has 3 channels
    unless ``color_type`` is a grayscale flag (see :func:`decode_image`). A
    missing file raises ``FileNotFoundError`` from the file client, as before.
    The arguments are those of mmdet's class.

    NOTE: OpenCV 4.10 decodes a truncated JPEG without an error and fills the
    missing part, so such a file is not detected. Truncated PNG, TIFF and BMP
    files are.
    """

    def __call__(self, results: dict) -> dict:
        """Load the image named by ``results['img_info']['filename']``.

        Returns:
            ``results`` with the same keys that mmdet's class adds: ``filename``,
            ``ori_filename``, ``img``, ``img_shape``, ``ori_shape`` and
            ``img_fields``.
        """
        if self.file_client is None:
            self.file_client = mmcv.FileClient(**self.file_client_args)

        if results['img_prefix'] is not None:
            filename = osp.join(results['img_prefix'],
                                results['img_info']['filename'])
        else:
            filename = results['img_info']['filename']

        img_bytes = self.file_client.get(filename)
        img = decode_image(img_bytes, filename, self.color_type, self.channel_order)
        if self.to_float32:
            img = img.astype(np.float32)

        results['filename'] = filename
        results['ori_filename'] = results['img_info']['filename']
        results['img'] = img
        results['img_shape'] = img.shape
        results['ori_shape'] = img.shape
        results['img_fields'] = ['img']
        return results
