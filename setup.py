"""Install the ``lsknet`` package: LSKNet and knowledge distillation for mmrotate 0.3.4.

The OpenMMLab packages (mmcv-full, mmdet, mmrotate) are not installed from here,
because mmcv-full must match the local torch and CUDA build. ``make env`` installs the
CPU reference stack; GPU users follow the README.
"""
import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    namespace = {}
    with open(osp.join('lsknet', 'version.py'), encoding='utf-8') as version_file:
        exec(version_file.read(), namespace)
    return namespace['__version__']


def read_requirements(path: str) -> list:
    with open(path, encoding='utf-8') as requirement_file:
        lines = (line.split('#')[0].strip() for line in requirement_file)
        return [line for line in lines if line]


setup(
    name='lsknet',
    version=read_version(),
    description='LSKNet backbone and Hinton distillation (LSKNet-S to LSKNet-T) '
    'for oriented object detection with mmrotate 0.3.4',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    python_requires='>=3.8',
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={
        'tests': read_requirements('requirements/tests.txt'),
        'mim': read_requirements('requirements/mminstall.txt'),
    },
    license='Apache License 2.0',
    zip_safe=False,
)
