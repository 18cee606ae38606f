"""Training recipes: data preparation that keeps detectors off processing and anatomy shortcuts
(:mod:`.recipes`). The training loops themselves live below the detectors, in
:mod:`medforensics.detectors.components`."""
