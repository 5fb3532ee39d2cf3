FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CORRAL_VAR_DIR=/var/lib/corral
WORKDIR /app
COPY pyproject.toml ./
COPY config ./config
COPY licensing ./licensing
COPY governance ./governance
COPY inference ./inference
COPY templates ./templates
COPY manage.py ./
RUN pip install --no-cache-dir . && useradd --system --home /app corral && mkdir -p /var/lib/corral \
    && chown corral /var/lib/corral
USER corral
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
