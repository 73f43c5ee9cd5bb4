"""Predict nuclei in images: ``python predict.py IMAGES -c RUN_DIR -o OUT`` (see nucseg/predict/cli.py)."""

from nucseg.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
