package org.esrerank.analysis;

import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.en.EnglishAnalyzer;
import org.elasticsearch.plugin.NamedComponent;
import org.elasticsearch.plugin.analysis.AnalyzerFactory;

/**
 * The {@code english} analyzer of Elasticsearch's analysis-common module, which the
 * Maven Central distribution lacks: Lucene's {@link EnglishAnalyzer} with its default
 * English stop words and no stem exclusions (standard tokenizer, English possessive
 * filter, lowercase, stop words, Porter stemmer).
 */
@NamedComponent("english")
public class EnglishAnalyzerFactory implements AnalyzerFactory {

    @Override
    public Analyzer create() {
        return new EnglishAnalyzer();
    }
}
